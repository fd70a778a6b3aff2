/**
 * qemu-io's commands about the image rather than its data: `length`, `info`, `map`, `alloc`,
 * `discard`, `flush` and `truncate`.
 *
 * @module
 */

import {
  BlockError,
  isAllocatedAbove,
  type Node,
  Perm,
  type PreallocMode,
  strerror,
} from "@blockgraph/core";
import { cvtstr, report } from "../common/format.ts";
import { driverInfo, dumpFormatSpecific } from "../common/driver_info.ts";
import {
  FAILED,
  type IoCommand,
  number,
  parseArgs,
  REQUEST_MAX_BYTES,
  since,
  usage,
} from "./command.ts";

function errText(e: unknown): string {
  return strerror(BlockError.from(e).code);
}

/** `length`: the image size in qemu-io's units. */
export const lengthCommand: IoCommand = {
  name: "length",
  altname: "l",
  argmin: 0,
  argmax: 0,
  run(s) {
    try {
      s.out(cvtstr(s.backend!.getLength()) + "\n");
      return Promise.resolve(0);
    } catch (e) {
      s.out(`getlength: ${errText(e)}\n`);
      return Promise.resolve(FAILED);
    }
  },
};

/** `info`: format name, cluster size, VM state offset, format-specific facts. */
export const infoCommand: IoCommand = {
  name: "info",
  altname: "i",
  argmin: 0,
  argmax: 0,
  run(s) {
    const node = s.node!;
    s.out(`format name: ${node.driver.name}\n`);
    if (node.driver.kind === "protocol") s.out(`format name: ${node.driver.name}\n`);
    const info = driverInfo(node);
    if (!info) return Promise.resolve(FAILED);
    s.out(`cluster size: ${cvtstr(info.clusterSize)}\n`);
    s.out(`vm state offset: ${cvtstr(info.vmStateOffset)}\n`);
    const specific = node.instance?.formatInfo?.();
    if (specific && Object.keys(specific).length > 0) {
      s.out("Format specific information:\n" + dumpFormatSpecific(specific, 4));
    }
    return Promise.resolve(0);
  },
};

/** QEMU's `bdrv_is_allocated` on `node`: this layer only, clamped to the end (0 bytes there). */
async function isAllocated(
  node: Node,
  offset: number,
  bytes: number,
): Promise<{ allocated: boolean; num: number }> {
  const len = node.getLength();
  if (offset >= len || bytes === 0) return { allocated: false, num: 0 };
  const want = Math.min(bytes, len - offset);
  const base = node.cowChild?.node ?? null;
  const r = await isAllocatedAbove(node, base, offset, want);
  return { allocated: r.allocated, num: Math.min(r.pnum, want) };
}

/** `alloc offset [count]`: how much of the range is allocated in the top layer. */
export const allocCommand: IoCommand = {
  name: "alloc",
  altname: "a",
  argmin: 1,
  argmax: 2,
  async run(s, argv) {
    const start = number(s, argv[1]!);
    if (start === null) return FAILED;
    let count = 512;
    if (argv.length === 3) {
      const n = number(s, argv[2]!);
      if (n === null) return FAILED;
      count = n;
    }
    let offset = start;
    let remaining = count;
    let sum = 0;
    while (remaining > 0) {
      let r: { allocated: boolean; num: number };
      try {
        r = await isAllocated(s.node!, offset, remaining);
      } catch (e) {
        s.out(`is_allocated failed: ${errText(e)}\n`);
        return FAILED;
      }
      offset += r.num;
      remaining -= r.num;
      if (r.allocated) sum += r.num;
      if (r.num === 0) {
        count -= remaining;
        remaining = 0;
      }
    }
    s.out(`${sum}/${count} bytes allocated at offset ${cvtstr(start)}\n`);
    return 0;
  },
};

/** `map`: the allocated and unallocated extents of the top layer. */
export const mapCommand: IoCommand = {
  name: "map",
  argmin: 0,
  argmax: 0,
  async run(s) {
    let bytes: number;
    try {
      bytes = s.backend!.getLength();
    } catch (e) {
      s.report(`Failed to query image length: ${errText(e)}`);
      return FAILED;
    }
    let offset = 0;
    while (bytes > 0) {
      let first: { allocated: boolean; num: number };
      let num: number;
      try {
        first = await isAllocated(s.node!, offset, Math.min(bytes, REQUEST_MAX_BYTES));
        num = first.num;
        while (num < bytes) {
          const next = await isAllocated(
            s.node!,
            offset + num,
            Math.min(bytes - num, REQUEST_MAX_BYTES),
          );
          if (next.allocated !== first.allocated || next.num === 0) break;
          num += next.num;
        }
      } catch (e) {
        s.report(`Failed to get allocation status: ${errText(e)}`);
        return FAILED;
      }
      if (num === 0) {
        s.report("Unexpected end of image");
        return FAILED;
      }
      const state = first.allocated ? "    allocated" : "not allocated";
      s.out(
        `${cvtstr(num)} (0x${num.toString(16)}) bytes ${state} at offset ${cvtstr(offset)} ` +
          `(0x${offset.toString(16)})\n`,
      );
      offset += num;
      bytes -= num;
    }
    return 0;
  },
};

/** `discard [-Cq] off len`. */
export const discardCommand: IoCommand = {
  name: "discard",
  altname: "d",
  argmin: 2,
  argmax: -1,
  perm: Perm.WRITE,
  async run(s, argv) {
    const p = parseArgs(s, "discard", argv, "Cq");
    if ("failed" in p) return p.failed;
    const machine = p.options.some((o) => o.key === "C");
    const quiet = p.options.some((o) => o.key === "q");
    if (p.operands.length !== 2) return usage(s, "discard");
    const offset = number(s, p.operands[0]!);
    if (offset === null) return FAILED;
    const bytes = number(s, p.operands[1]!);
    if (bytes === null) return FAILED;
    if (bytes > REQUEST_MAX_BYTES) {
      s.out(`length cannot exceed ${REQUEST_MAX_BYTES}, given ${p.operands[1]}\n`);
      return FAILED;
    }
    const t0 = performance.now();
    try {
      await s.backend!.pdiscard(offset, bytes);
    } catch (e) {
      s.out(`discard failed: ${errText(e)}\n`);
      return FAILED;
    }
    if (!quiet) s.out(report("discard", since(t0), offset, bytes, bytes, 1, machine));
    return 0;
  },
};

/** `flush`: makes everything written stable; a failure only shows in the exit status. */
export const flushCommand: IoCommand = {
  name: "flush",
  altname: "f",
  argmin: 0,
  argmax: 0,
  async run(s) {
    try {
      await s.backend!.flush();
      return 0;
    } catch {
      return FAILED;
    }
  },
};

const PREALLOC_MODES = ["off", "metadata", "falloc", "full"];

/** `truncate [-m prealloc_mode] off`. */
export const truncateCommand: IoCommand = {
  name: "truncate",
  altname: "t",
  argmin: 1,
  argmax: 3,
  perm: Perm.WRITE | Perm.RESIZE,
  async run(s, argv) {
    const p = parseArgs(s, "truncate", argv, "m:");
    if ("failed" in p) return p.failed;
    let prealloc: PreallocMode = "off";
    for (const o of p.options) {
      if (!PREALLOC_MODES.includes(o.value!)) {
        s.report(`Invalid preallocation mode '${o.value}'`);
        return FAILED;
      }
      prealloc = o.value as PreallocMode;
    }
    if (p.operands.length < 1) return usage(s, "truncate");
    const offset = number(s, p.operands[0]!);
    if (offset === null) return FAILED;
    try {
      await s.backend!.truncate(offset, false, prealloc);
    } catch (e) {
      s.report(BlockError.from(e).message);
      return FAILED;
    }
    return 0;
  },
};
