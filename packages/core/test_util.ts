/**
 * Small drivers for core's own tests (core depends on no real driver): `ram` (a protocol
 * with configurable alignment, max transfer and latency), `pass` (a counting filter) and
 * `overlay` (a format with a backing file). Not part of the published package.
 *
 * @module
 */

import { type Child, ChildRole } from "./child.ts";
import {
  type BlockDriver,
  type BlockStatus,
  BlockStatusFlags,
  type DriverInstance,
  DriverRegistry,
  ReqFlags,
} from "./driver.ts";
import { BlockError } from "./errors.ts";
import { Graph } from "./graph.ts";
import type { IoVector } from "./io_vector.ts";

/** Operations seen by a `ram` node, for assertions. */
export interface RamLog {
  ops: { op: string; offset: number; bytes: number; flags: number }[];
}

/** Errno codes that every write to a `ram` node fails with, by node name (tests set them). */
export const ramFaults = new Map<string, string>();

/** Logs of every `ram` node opened, by node name. */
export const ramLogs = new Map<string, RamLog>();

function delay(ms: number): Promise<void> {
  return ms > 0 ? new Promise((r) => setTimeout(r, ms)) : Promise.resolve();
}

const ram: BlockDriver = {
  name: "ram",
  kind: "protocol",
  options: {
    size: { type: "size", description: "size", default: 1 << 20 },
    align: { type: "int", description: "request alignment", default: 1 },
    "max-transfer": { type: "int", description: "max transfer", default: 0 },
    "delay-ms": { type: "int", description: "latency", default: 0 },
    fua: { type: "bool", description: "native FUA", default: false },
    zeroes: { type: "bool", description: "native write-zeroes", default: true },
    "fail-writes": { type: "string", description: "errno code for every write", default: "" },
    "deny-write": { type: "bool", description: "refuse read-write opens", default: false },
    "host-fd": { type: "int", description: "serve preadHost with this fd (-1: no)", default: -1 },
    "discard-align": { type: "int", description: "discard alignment (0: no discard)", default: 0 },
  },
  open(ctx, o) {
    if (o["deny-write"] && !ctx.readOnly && !ctx.fallBackToReadOnly()) {
      return Promise.reject(new BlockError("EACCES", "Could not open 'ram': Permission denied"));
    }
    let data = new Uint8Array(o["size"] as number);
    const log: RamLog = { ops: [] };
    ramLogs.set(ctx.node.name, log);
    const ms = o["delay-ms"] as number;
    const failWrites = o["fail-writes"] as string;
    const inst: DriverInstance = {
      limits: { requestAlignment: o["align"] as number, maxTransfer: o["max-transfer"] as number },
      supportedWriteFlags: o["fua"] ? ReqFlags.FUA : 0,
      supportedZeroFlags: ReqFlags.MAY_UNMAP,
      getLength: () => data.length,
      async preadv(offset, bytes, qiov: IoVector, qo, flags) {
        log.ops.push({ op: "read", offset, bytes, flags });
        await delay(ms);
        const avail = Math.max(0, Math.min(bytes, data.length - offset));
        qiov.copyFrom(qo, data, offset, avail);
        if (avail < bytes) qiov.fill(qo + avail, bytes - avail);
      },
      async pwritev(offset, bytes, qiov, qo, flags) {
        log.ops.push({ op: "write", offset, bytes, flags });
        await delay(ms);
        const fault = ramFaults.get(ctx.node.name) || failWrites;
        if (fault) throw new BlockError(fault as "EIO", undefined, { offset });
        if (offset + bytes > data.length) {
          const grown = new Uint8Array(offset + bytes);
          grown.set(data);
          data = grown;
        }
        qiov.copyTo(qo, data, offset, bytes);
      },
      async flush() {
        log.ops.push({ op: "flush", offset: 0, bytes: 0, flags: 0 });
        await delay(ms);
      },
      async truncate(size) {
        const n = new Uint8Array(size);
        n.set(data.subarray(0, Math.min(size, data.length)));
        data = n;
        await delay(0);
      },
      close: () => {
        log.ops.push({ op: "close", offset: 0, bytes: 0, flags: 0 });
        return Promise.resolve();
      },
    };
    const hostFd = o["host-fd"] as number;
    if (hostFd >= 0) {
      inst.preadHost = async (offset, bytes, sink) => {
        log.ops.push({ op: "host", offset, bytes, flags: 0 });
        await sink(hostFd, offset, bytes);
        return true;
      };
    }
    const discardAlign = o["discard-align"] as number;
    if (discardAlign > 0) {
      inst.limits!.pdiscardAlignment = discardAlign;
      inst.pdiscard = (offset, bytes) => {
        log.ops.push({ op: "discard", offset, bytes, flags: 0 });
        return Promise.resolve();
      };
    }
    if (o["zeroes"]) {
      inst.pwriteZeroes = async (offset, bytes, flags) => {
        log.ops.push({ op: "zeroes", offset, bytes, flags });
        await delay(ms);
        data.fill(0, offset, Math.min(offset + bytes, data.length));
      };
    }
    return Promise.resolve(inst);
  },
};

/** How many requests each `pass` filter forwarded, by node name. */
export const passCounts = new Map<string, number>();

const pass: BlockDriver = {
  name: "pass",
  kind: "filter",
  childOptions: ["file"],
  options: {},
  async open(ctx) {
    const child = (await ctx.openChild("file", ChildRole.FILTERED | ChildRole.PRIMARY, true))!;
    const name = ctx.node.name;
    passCounts.set(name, 0);
    const count = () => passCounts.set(name, passCounts.get(name)! + 1);
    const below = () => child.node!;
    return {
      getLength: () => below().getLength(),
      preadv(offset, bytes, qiov, qo, flags) {
        count();
        return below().preadv(offset, bytes, qiov, qo, flags);
      },
      pwritev(offset, bytes, qiov, qo, flags) {
        count();
        return below().pwritev(offset, bytes, qiov, qo, flags);
      },
      pwriteZeroes(offset, bytes, flags) {
        count();
        return below().pwriteZeroes(offset, bytes, flags);
      },
      truncate: (size, exact, prealloc) => below().truncate(size, exact, prealloc),
      close: () => Promise.resolve(),
    };
  },
};

/**
 * `overlay`: a format whose `file` holds data at the same offsets, with an allocation map
 * in memory; unallocated ranges read from `backing` (or zeros).
 */
const overlay: BlockDriver = {
  name: "overlay",
  kind: "format",
  childOptions: ["file"],
  supportsBacking: true,
  options: { size: { type: "size", description: "virtual size", default: 1 << 20 } },
  async open(ctx, o) {
    const file: Child = (await ctx.openChild("file", ChildRole.IMAGE, true))!;
    const backing = await ctx.openChild("backing", ChildRole.COW, false);
    const size = o["size"] as number;
    const block = 4096;
    const allocated = new Uint8Array(Math.ceil(size / block));
    const node = ctx.node;
    return {
      getLength: () => size,
      async preadv(offset, bytes, qiov, qo, flags) {
        for (let done = 0; done < bytes;) {
          const o2 = offset + done;
          const n = Math.min(bytes - done, block - (o2 % block));
          const b = node.backing?.node ?? backing?.node ?? null;
          if (allocated[Math.floor(o2 / block)]) {
            await file.node!.preadv(o2, n, qiov, qo + done, flags);
          } else if (b) await b.preadv(o2, n, qiov, qo + done, flags);
          else qiov.fill(qo + done, n);
          done += n;
        }
      },
      async pwritev(offset, bytes, qiov, qo, flags) {
        const first = Math.floor(offset / block);
        const last = Math.floor((offset + bytes - 1) / block);
        for (let i = first; i <= last; i++) {
          if (allocated[i]) continue;
          // Copy on write: fill the block from below before the partial write.
          const buf = new Uint8Array(block);
          const b = node.backing?.node;
          if (b) await b.read(i * block, buf);
          await file.node!.write(i * block, buf);
          allocated[i] = 1;
        }
        await file.node!.pwritev(offset, bytes, qiov, qo, flags);
      },
      blockStatus(_wantZero, offset, bytes): BlockStatus {
        const i = Math.floor(offset / block);
        const state = allocated[i];
        let pnum = Math.min(bytes, block - (offset % block));
        while (pnum < bytes && allocated[Math.floor((offset + pnum) / block)] === state) {
          pnum = Math.min(bytes, pnum + block);
        }
        return state
          ? {
            status: BlockStatusFlags.DATA | BlockStatusFlags.OFFSET_VALID,
            pnum,
            map: offset,
            file: file.node!,
          }
          : { status: 0, pnum };
      },
      close: () => Promise.resolve(),
    };
  },
};

/** The test drivers, for tests elsewhere that mix them with real ones. */
export const testDrivers: readonly BlockDriver[] = [ram, pass, overlay];

/** A registry with the test drivers. */
export function testRegistry(): DriverRegistry {
  return new DriverRegistry([ram, pass, overlay]);
}

/** A new graph over the test drivers. */
export function testGraph(): Graph {
  return new Graph({ registry: testRegistry() });
}

/** A buffer of `n` bytes of `value`. */
export function pattern(n: number, value: number): Uint8Array {
  return new Uint8Array(n).fill(value);
}

/** Asserts that `fn` rejects with an instance of `cls` whose message includes `text`. */
export async function assertRejects<E extends Error>(
  fn: () => Promise<unknown>,
  cls: new (...args: never[]) => E,
  text?: string,
): Promise<E> {
  try {
    await fn();
  } catch (e) {
    if (!(e instanceof cls)) throw new Error(`expected ${cls.name}, got ${String(e)}`);
    if (text !== undefined && !e.message.includes(text)) {
      throw new Error(`expected message including "${text}", got "${e.message}"`);
    }
    return e;
  }
  throw new Error(`expected a rejection with ${cls.name}`);
}

/** Asserts that `fn` throws an instance of `cls` whose message includes `text`. */
export function assertThrows<E extends Error>(
  fn: () => unknown,
  cls: new (...args: never[]) => E,
  text?: string,
): E {
  try {
    fn();
  } catch (e) {
    if (!(e instanceof cls)) throw new Error(`expected ${cls.name}, got ${String(e)}`);
    if (text !== undefined && !e.message.includes(text)) {
      throw new Error(`expected message including "${text}", got "${e.message}"`);
    }
    return e;
  }
  throw new Error(`expected a throw of ${cls.name}`);
}
