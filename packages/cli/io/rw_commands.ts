/**
 * qemu-io's data commands: `read`, `readv`, `write`, `writev`, `aio_read`, `aio_write` and
 * `aio_flush`, with QEMU 7.2's options, checks, messages and report lines.
 *
 * @module
 */

import {
  backendLoadVmState,
  backendSaveVmState,
  BlockError,
  IoVector,
  Perm,
  ReqFlags,
  strerror,
} from "@blockgraph/core";
import { dumpBuffer, report } from "../common/format.ts";
import {
  type CommandResult,
  FAILED,
  type IoCommand,
  number,
  parseArgs,
  pattern,
  REQUEST_MAX_BYTES,
  since,
  usage,
} from "./command.ts";
import type { IoSession } from "./session.ts";

function errText(e: unknown): string {
  return strerror(BlockError.from(e).code);
}

function checkAligned(s: IoSession, offset: number, count: number): boolean {
  if (offset % 512 !== 0) {
    s.out(`${offset} is not a sector-aligned value for 'offset'\n`);
    return false;
  }
  if (count % 512 !== 0) {
    s.out(`${count} is not a sector-aligned value for 'count'\n`);
    return false;
  }
  return true;
}

function firstMismatch(buf: Uint8Array, value: number): boolean {
  for (let i = 0; i < buf.length; i++) if (buf[i] !== value) return true;
  return false;
}

/** `read [-bCqv] [-P pattern [-s off] [-l len]] off len`. */
export const readCommand: IoCommand = {
  name: "read",
  altname: "r",
  argmin: 2,
  argmax: -1,
  async run(s, argv) {
    const p = parseArgs(s, "read", argv, "bCl:pP:qs:v");
    if ("failed" in p) return p.failed;
    let b = false, machine = false, quiet = false, verbose = false;
    let pat: number | null = null, patOffset = 0, patCount = 0;
    let sflag = false, lflag = false;
    for (const o of p.options) {
      switch (o.key) {
        case "b":
          b = true;
          break;
        case "C":
          machine = true;
          break;
        case "l": {
          const n = number(s, o.value!);
          if (n === null) return FAILED;
          lflag = true;
          patCount = n;
          break;
        }
        case "P":
          pat = pattern(s, o.value!);
          if (pat === null) return FAILED;
          break;
        case "q":
          quiet = true;
          break;
        case "s": {
          const n = number(s, o.value!);
          if (n === null) return FAILED;
          sflag = true;
          patOffset = n;
          break;
        }
        case "v":
          verbose = true;
          break;
      }
    }
    if (p.operands.length !== 2) return usage(s, "read");
    const offset = number(s, p.operands[0]!);
    if (offset === null) return FAILED;
    const count = number(s, p.operands[1]!);
    if (count === null) return FAILED;
    if (count > REQUEST_MAX_BYTES) {
      s.out(`length cannot exceed ${REQUEST_MAX_BYTES}, given ${p.operands[1]}\n`);
      return FAILED;
    }
    if (pat === null && (lflag || sflag)) return usage(s, "read");
    if (!lflag) patCount = count - patOffset;
    if (patCount < 0 || patCount + patOffset > count) {
      s.out("pattern verification range exceeds end of read data\n");
      return FAILED;
    }
    if (b && !checkAligned(s, offset, count)) return FAILED;
    const buf = new Uint8Array(count).fill(0xab);
    const t0 = performance.now();
    try {
      if (b) await backendLoadVmState(s.backend!, offset, buf);
      else await s.backend!.preadv(offset, count, IoVector.of(buf), 0, 0);
    } catch (e) {
      s.out(`read failed: ${errText(e)}\n`);
      return FAILED;
    }
    const elapsed = since(t0);
    let ret = 0;
    if (pat !== null && firstMismatch(buf.subarray(patOffset, patOffset + patCount), pat)) {
      s.out(`Pattern verification failed at offset ${offset + patOffset}, ${patCount} bytes\n`);
      ret = FAILED;
    }
    if (quiet) return ret;
    if (verbose) s.out(dumpBuffer(buf, offset));
    s.out(report("read", elapsed, offset, count, count, 1, machine));
    return ret;
  },
};

/** Parses the lengths of a vectored request; `null` after printing why not. */
function lengths(s: IoSession, args: readonly string[]): number[] | null {
  const out: number[] = [];
  let total = 0;
  for (const arg of args) {
    const len = number(s, arg);
    if (len === null) return null;
    if (len > REQUEST_MAX_BYTES) {
      s.out(`Argument '${arg}' exceeds maximum size ${REQUEST_MAX_BYTES}\n`);
      return null;
    }
    if (total > REQUEST_MAX_BYTES - len) {
      s.out(`The total number of bytes exceed the maximum size ${REQUEST_MAX_BYTES}\n`);
      return null;
    }
    out.push(len);
    total += len;
  }
  return out;
}

/** Builds the buffers of a vectored request, filled with `fill`. */
function vector(sizes: readonly number[], fill: number): { qiov: IoVector; all: Uint8Array } {
  const total = sizes.reduce((a, b) => a + b, 0);
  const all = new Uint8Array(total).fill(fill);
  const parts: Uint8Array[] = [];
  let at = 0;
  for (const n of sizes) {
    parts.push(all.subarray(at, at + n));
    at += n;
  }
  return { qiov: new IoVector(parts), all };
}

/** `readv [-Cqv] [-P pattern] off len [len..]`. */
export const readvCommand: IoCommand = {
  name: "readv",
  argmin: 2,
  argmax: -1,
  async run(s, argv) {
    const p = parseArgs(s, "readv", argv, "CP:qv");
    if ("failed" in p) return p.failed;
    let machine = false, quiet = false, verbose = false;
    let pat: number | null = null;
    for (const o of p.options) {
      if (o.key === "C") machine = true;
      else if (o.key === "q") quiet = true;
      else if (o.key === "v") verbose = true;
      else if (o.key === "P") {
        pat = pattern(s, o.value!);
        if (pat === null) return FAILED;
      }
    }
    if (p.operands.length < 2) return usage(s, "readv");
    const offset = number(s, p.operands[0]!);
    if (offset === null) return FAILED;
    const sizes = lengths(s, p.operands.slice(1));
    if (sizes === null) return FAILED;
    const { qiov, all } = vector(sizes, 0xab);
    const t0 = performance.now();
    try {
      await s.backend!.preadv(offset, all.length, qiov, 0, 0);
    } catch (e) {
      s.out(`readv failed: ${errText(e)}\n`);
      return FAILED;
    }
    const elapsed = since(t0);
    let ret = 0;
    if (pat !== null && firstMismatch(all, pat)) {
      s.out(`Pattern verification failed at offset ${offset}, ${all.length} bytes\n`);
      ret = FAILED;
    }
    if (quiet) return ret;
    if (verbose) s.out(dumpBuffer(all, offset));
    s.out(report("read", elapsed, offset, all.length, all.length, 1, machine));
    return ret;
  },
};

/** Fills `len` bytes by repeating the contents of `path`; `null` after printing why not. */
async function fromFile(s: IoSession, path: string, len: number): Promise<Uint8Array | null> {
  let data: Uint8Array;
  try {
    data = await Deno.readFile(path);
  } catch (e) {
    s.err(`${path}: ${strerror(BlockError.from(e).code)}\n`);
    return null;
  }
  if (data.length === 0) {
    s.err(`${path}: file is empty\n`);
    return null;
  }
  const buf = new Uint8Array(len);
  for (let at = 0; at < len; at += data.length) {
    buf.set(data.subarray(0, Math.min(data.length, len - at)), at);
  }
  return buf;
}

/** `write [-bcCfnquz] [-P pattern | -s source_file] off len`. */
export const writeCommand: IoCommand = {
  name: "write",
  altname: "w",
  argmin: 2,
  argmax: -1,
  perm: Perm.WRITE,
  async run(s, argv) {
    const p = parseArgs(s, "write", argv, "bcCfnpP:qs:uz");
    if ("failed" in p) return p.failed;
    let b = false, c = false, machine = false, quiet = false, z = false;
    let flags = 0;
    let pat = 0xcd, pflag = false;
    let source: string | null = null;
    for (const o of p.options) {
      switch (o.key) {
        case "b":
          b = true;
          break;
        case "c":
          c = true;
          break;
        case "C":
          machine = true;
          break;
        case "f":
          flags |= ReqFlags.FUA;
          break;
        case "n":
          flags |= ReqFlags.NO_FALLBACK;
          break;
        case "P": {
          const v = pattern(s, o.value!);
          if (v === null) return FAILED;
          pat = v;
          pflag = true;
          break;
        }
        case "q":
          quiet = true;
          break;
        case "s":
          source = o.value!;
          break;
        case "u":
          flags |= ReqFlags.MAY_UNMAP;
          break;
        case "z":
          z = true;
          break;
      }
    }
    if (p.operands.length !== 2) return usage(s, "write");
    if (b && z) {
      s.out("-b and -z cannot be specified at the same time\n");
      return FAILED;
    }
    if ((flags & ReqFlags.FUA) && (b || c)) {
      s.out("-f and -b or -c cannot be specified at the same time\n");
      return FAILED;
    }
    if ((flags & ReqFlags.NO_FALLBACK) && !z) {
      s.out("-n requires -z to be specified\n");
      return FAILED;
    }
    if ((flags & ReqFlags.MAY_UNMAP) && !z) {
      s.out("-u requires -z to be specified\n");
      return FAILED;
    }
    if (Number(z) + Number(pflag) + Number(source !== null) > 1) {
      s.out("Only one of -z, -P, and -s can be specified at the same time\n");
      return FAILED;
    }
    const offset = number(s, p.operands[0]!);
    if (offset === null) return FAILED;
    const count = number(s, p.operands[1]!);
    if (count === null) return FAILED;
    if (count > REQUEST_MAX_BYTES) {
      s.out(`length cannot exceed ${REQUEST_MAX_BYTES}, given ${p.operands[1]}\n`);
      return FAILED;
    }
    if ((b || c) && !checkAligned(s, offset, count)) return FAILED;
    let buf: Uint8Array | null = null;
    if (!z) {
      buf = source !== null ? await fromFile(s, source, count) : new Uint8Array(count).fill(pat);
      if (buf === null) return FAILED;
    }
    const blk = s.backend!;
    const t0 = performance.now();
    try {
      if (b) await backendSaveVmState(blk, offset, buf!);
      else if (z) await blk.pwriteZeroes(offset, count, flags);
      else if (c) {
        const inst = blk.node?.instance;
        if (!((inst?.supportedWriteFlags ?? 0) & ReqFlags.WRITE_COMPRESSED)) {
          throw new BlockError("ENOTSUP");
        }
        await blk.pwritev(offset, count, IoVector.of(buf!), 0, ReqFlags.WRITE_COMPRESSED);
      } else await blk.pwritev(offset, count, IoVector.of(buf!), 0, flags);
    } catch (e) {
      s.out(`write failed: ${errText(e)}\n`);
      return FAILED;
    }
    if (!quiet) s.out(report("wrote", since(t0), offset, count, count, 1, machine));
    return 0;
  },
};

/** `writev [-Cfq] [-P pattern] off len [len..]`. */
export const writevCommand: IoCommand = {
  name: "writev",
  argmin: 2,
  argmax: -1,
  perm: Perm.WRITE,
  async run(s, argv) {
    const p = parseArgs(s, "writev", argv, "CfqP:");
    if ("failed" in p) return p.failed;
    let machine = false, quiet = false, flags = 0, pat = 0xcd;
    for (const o of p.options) {
      if (o.key === "C") machine = true;
      else if (o.key === "q") quiet = true;
      else if (o.key === "f") flags |= ReqFlags.FUA;
      else if (o.key === "P") {
        const v = pattern(s, o.value!);
        if (v === null) return FAILED;
        pat = v;
      }
    }
    if (p.operands.length < 2) return usage(s, "writev");
    const offset = number(s, p.operands[0]!);
    if (offset === null) return FAILED;
    const sizes = lengths(s, p.operands.slice(1));
    if (sizes === null) return FAILED;
    const { qiov, all } = vector(sizes, pat);
    const t0 = performance.now();
    try {
      await s.backend!.pwritev(offset, all.length, qiov, 0, flags);
    } catch (e) {
      s.out(`writev failed: ${errText(e)}\n`);
      return FAILED;
    }
    if (!quiet) s.out(report("wrote", since(t0), offset, all.length, all.length, 1, machine));
    return 0;
  },
};

function track(s: IoSession, p: Promise<void>): void {
  const tracked = p.finally(() => s.pending.delete(tracked));
  s.pending.add(tracked);
}

/** `aio_read [-Ciqv] [-P pattern] off len [len..]`: completes in the background. */
export const aioReadCommand: IoCommand = {
  name: "aio_read",
  argmin: 2,
  argmax: -1,
  run(s, argv) {
    const p = parseArgs(s, "aio_read", argv, "CP:iqv");
    if ("failed" in p) return Promise.resolve(p.failed);
    let machine = false, quiet = false, verbose = false;
    let pat: number | null = null;
    for (const o of p.options) {
      if (o.key === "C") machine = true;
      else if (o.key === "q") quiet = true;
      else if (o.key === "v") verbose = true;
      else if (o.key === "i") {
        s.out("injecting invalid read request\n");
        return Promise.resolve(0);
      } else if (o.key === "P") {
        pat = pattern(s, o.value!);
        if (pat === null) return Promise.resolve(FAILED);
      }
    }
    if (p.operands.length < 2) return Promise.resolve(usage(s, "aio_read"));
    const offset = number(s, p.operands[0]!);
    if (offset === null) return Promise.resolve(FAILED);
    const sizes = lengths(s, p.operands.slice(1));
    if (sizes === null) return Promise.resolve(FAILED);
    const { qiov, all } = vector(sizes, 0xab);
    const t0 = performance.now();
    track(
      s,
      s.backend!.preadv(offset, all.length, qiov, 0, 0).then(() => {
        const elapsed = since(t0);
        if (pat !== null && firstMismatch(all, pat)) {
          s.out(`Pattern verification failed at offset ${offset}, ${all.length} bytes\n`);
        }
        if (quiet) return;
        if (verbose) s.out(dumpBuffer(all, offset));
        s.out(report("read", elapsed, offset, all.length, all.length, 1, machine));
      }, (e) => s.out(`readv failed: ${errText(e)}\n`)),
    );
    return Promise.resolve(0);
  },
};

/** `aio_write [-Cfiquz] [-P pattern] off len [len..]`: completes in the background. */
export const aioWriteCommand: IoCommand = {
  name: "aio_write",
  argmin: 2,
  argmax: -1,
  perm: Perm.WRITE,
  run(s, argv) {
    const p = parseArgs(s, "aio_write", argv, "CfiqP:uz");
    if ("failed" in p) return Promise.resolve(p.failed);
    let machine = false, quiet = false, z = false, flags = 0, pat = 0xcd;
    for (const o of p.options) {
      if (o.key === "C") machine = true;
      else if (o.key === "q") quiet = true;
      else if (o.key === "f") flags |= ReqFlags.FUA;
      else if (o.key === "u") flags |= ReqFlags.MAY_UNMAP;
      else if (o.key === "z") z = true;
      else if (o.key === "i") {
        s.out("injecting invalid write request\n");
        return Promise.resolve(0);
      } else if (o.key === "P") {
        const v = pattern(s, o.value!);
        if (v === null) return Promise.resolve(FAILED);
        pat = v;
      }
    }
    if (p.operands.length < 2) return Promise.resolve(usage(s, "aio_write"));
    if (z && p.operands.length !== 2) {
      s.out("-z supports only a single length parameter\n");
      return Promise.resolve(FAILED);
    }
    if ((flags & ReqFlags.MAY_UNMAP) && !z) {
      s.out("-u requires -z to be specified\n");
      return Promise.resolve(FAILED);
    }
    const offset = number(s, p.operands[0]!);
    if (offset === null) return Promise.resolve(FAILED);
    const blk = s.backend!;
    const done = (count: number, t0: number) => () => {
      if (!quiet) s.out(report("wrote", since(t0), offset, count, count, 1, machine));
    };
    const failed = (e: unknown) => s.out(`aio_write failed: ${errText(e)}\n`);
    if (z) {
      const count = number(s, p.operands[1]!);
      if (count === null) return Promise.resolve(FAILED);
      track(s, blk.pwriteZeroes(offset, count, flags).then(done(count, performance.now()), failed));
      return Promise.resolve(0);
    }
    const sizes = lengths(s, p.operands.slice(1));
    if (sizes === null) return Promise.resolve(FAILED);
    const { qiov, all } = vector(sizes, pat);
    const t0 = performance.now();
    track(s, blk.pwritev(offset, all.length, qiov, 0, flags).then(done(all.length, t0), failed));
    return Promise.resolve(0);
  },
};

/** `aio_flush`: waits for every outstanding asynchronous request. */
export const aioFlushCommand: IoCommand = {
  name: "aio_flush",
  argmin: 0,
  argmax: 0,
  async run(s): Promise<CommandResult> {
    await s.drainAio();
    return 0;
  },
};
