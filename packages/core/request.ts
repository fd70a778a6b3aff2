/**
 * The request layer between a node's users and its driver: range checks, alignment with
 * read-modify-write, max-transfer splitting, tracked and serialising requests, in-flight
 * counting for drain, zero detection and FUA emulation.
 *
 * The fast path (an aligned request within limits, no serialising request in flight) calls
 * the driver directly and hands its promise on with two pre-bound callbacks: no `async`
 * frame, no closure, no allocation beyond the driver's own promise. A node with dirty
 * bitmaps pays for two closures per fast write, which mark the written range as it completes.
 *
 * @module
 */

import { HOST_READ_DECLINED, type HostReadSink, type PreallocMode, ReqFlags } from "./driver.ts";
import { markDirty, resizeDirtyBitmaps } from "./dirty_bitmap.ts";
import { BlockError } from "./errors.ts";
import { IoVector } from "./io_vector.ts";
import {
  checkRange,
  checkVector,
  checkWritable,
  closed,
  MAX_LENGTH,
  rejectWith,
} from "./request_check.ts";
import type { Node } from "./node.ts";
import { Perm } from "./permissions.ts";

const RESOLVED: Promise<void> = Promise.resolve();
const WRITE_PERMS = Perm.WRITE | Perm.WRITE_UNCHANGED;
const ZERO_BUFFER_SIZE = 1024 * 1024;
let zeroBuffer: Uint8Array | null = null;

function zeros(): Uint8Array {
  return zeroBuffer ??= new Uint8Array(ZERO_BUFFER_SIZE);
}

function isAligned(value: number, align: number): boolean {
  return align === 1 || value % align === 0;
}

function alignDown(value: number, align: number): number {
  return align === 1 ? value : value - (value % align);
}

function alignUp(value: number, align: number): number {
  return align === 1 ? value : Math.ceil(value / align) * align;
}

// ---------------------------------------------------------------- read

/** Reads `bytes` bytes at `offset` of `node` into `qiov` at `qiovOffset`. */
export function preadv(
  node: Node,
  offset: number,
  bytes: number,
  qiov: IoVector,
  qiovOffset: number,
  flags: number,
): Promise<void> {
  const inst = node.instance;
  if (inst === null) return closed(node, "read");
  const err = checkRange(node, offset, bytes, "read") ??
    checkVector(node, qiov, qiovOffset, bytes, "read", offset);
  if (err) return Promise.reject(err);
  if (bytes === 0) return RESOLVED;
  const { requestAlignment: align, maxTransfer: max } = node.limits;
  if (
    isAligned(offset, align) && isAligned(bytes, align) && (max === 0 || bytes <= max) &&
    offset + bytes <= inst.getLength()
  ) {
    node.inFlight++;
    try {
      return inst.preadv(offset, bytes, qiov, qiovOffset, flags).then(node.ioDone, node.ioFail);
    } catch (e) {
      return rejectWith(node.ioFail, e);
    }
  }
  return slowRead(node, offset, bytes, qiov, qiovOffset, flags);
}

async function slowRead(
  node: Node,
  offset: number,
  bytes: number,
  qiov: IoVector,
  qiovOffset: number,
  flags: number,
): Promise<void> {
  node.inFlight++;
  try {
    const align = node.limits.requestAlignment;
    const start = alignDown(offset, align);
    const end = alignUp(offset + bytes, align);
    if (start === offset && end === offset + bytes) {
      await alignedRead(node, start, bytes, qiov, qiovOffset, flags);
    } else {
      const bounce = new Uint8Array(end - start);
      const bq = IoVector.of(bounce);
      await alignedRead(node, start, end - start, bq, 0, flags);
      qiov.copyFrom(qiovOffset, bounce, offset - start, bytes);
    }
  } catch (e) {
    throw BlockError.from(e, { node: node.name, op: "read", offset });
  } finally {
    if (--node.inFlight === 0) node.graph.notifyIdle();
  }
}

/** An aligned read, split at max transfer, zero-filled beyond the end of the node. */
async function alignedRead(
  node: Node,
  offset: number,
  bytes: number,
  qiov: IoVector,
  qiovOffset: number,
  flags: number,
): Promise<void> {
  const inst = node.instance;
  if (!inst) throw new BlockError("ENOMEDIUM", `Node '${node.name}' is closed`);
  const align = node.limits.requestAlignment;
  const max = maxChunk(node.limits.maxTransfer, align);
  // The driver sees reads up to the aligned end of the node; past it the layer fills zeros.
  const readable = Math.max(0, Math.min(bytes, alignUp(inst.getLength(), align) - offset));
  for (let done = 0; done < readable;) {
    const n = Math.min(readable - done, max);
    await inst.preadv(offset + done, n, qiov, qiovOffset + done, flags);
    done += n;
  }
  if (readable < bytes) qiov.fill(qiovOffset + readable, bytes - readable, 0);
}

/**
 * Serves a read of `node` through `sink` as a host file range ({@link DriverInstance.preadHost}),
 * counted in flight for as long as the sink runs, so a drain waits for it and the file stays
 * open. False (nothing called) when the driver cannot, the range is unaligned or past the
 * end, or a serialising request is in flight.
 */
export function preadHost(
  node: Node,
  offset: number,
  bytes: number,
  sink: HostReadSink,
): Promise<boolean> {
  const inst = node.instance;
  if (inst === null || inst.preadHost === undefined || bytes <= 0) return HOST_READ_DECLINED;
  const align = node.limits.requestAlignment;
  if (
    checkRange(node, offset, bytes, "read") !== null || !isAligned(offset, align) ||
    !isAligned(bytes, align) || offset + bytes > inst.getLength() || node.tracked.hasSerialising
  ) {
    return HOST_READ_DECLINED;
  }
  node.inFlight++;
  let p: Promise<boolean>;
  try {
    p = inst.preadHost(offset, bytes, sink);
  } catch (e) {
    p = Promise.reject(e);
  }
  return p.finally(node.ioDone);
}

function maxChunk(maxTransfer: number, align: number): number {
  if (maxTransfer === 0) return 1 << 30;
  return Math.max(alignDown(maxTransfer, align), align);
}

// ---------------------------------------------------------------- write

/** Writes `bytes` bytes at `offset` of `node` from `qiov` at `qiovOffset`. */
export function pwritev(
  node: Node,
  offset: number,
  bytes: number,
  qiov: IoVector,
  qiovOffset: number,
  flags: number,
): Promise<void> {
  const inst = node.instance;
  if (inst === null) return closed(node, "write");
  const err = checkRange(node, offset, bytes, "write") ??
    checkVector(node, qiov, qiovOffset, bytes, "write", offset) ?? checkWritable(node, offset);
  if (err) return Promise.reject(err);
  if (bytes === 0) return RESOLVED;
  const { requestAlignment: align, maxTransfer: max } = node.limits;
  if (
    isAligned(offset, align) && isAligned(bytes, align) && (max === 0 || bytes <= max) &&
    !node.tracked.hasSerialising && node.flags.detectZeroes === "off" &&
    ((flags & ReqFlags.FUA) === 0 || ((inst.supportedWriteFlags ?? 0) & ReqFlags.FUA) !== 0)
  ) {
    node.inFlight++;
    node.fastWrites++;
    try {
      const p = inst.pwritev(offset, bytes, qiov, qiovOffset, flags);
      if (node.dirtyBitmaps.length === 0) return p.then(node.writeDone, node.writeFail);
      return p.then(() => {
        markDirty(node, offset, bytes);
        node.writeDone();
      }, (e) => {
        markDirty(node, offset, bytes);
        return node.writeFail(e);
      });
    } catch (e) {
      return rejectWith(node.writeFail, e);
    }
  }
  return slowWrite(node, offset, bytes, qiov, qiovOffset, flags);
}

/**
 * Runs `body` as a tracked request over `[start, end)`: counted in flight, ordered against
 * overlapping serialising requests (or, when `serialising`, against every earlier write),
 * with errors named by node, operation and offset. When it ends, done or failed, the
 * node's enabled dirty bitmaps mark `[dirtyOffset, dirtyOffset + dirtyBytes)`.
 */
async function tracked(
  node: Node,
  start: number,
  end: number,
  serialising: boolean,
  op: string,
  offset: number,
  dirtyOffset: number,
  dirtyBytes: number,
  body: () => Promise<void>,
): Promise<void> {
  node.inFlight++;
  const t = node.tracked.begin(start, end, serialising);
  try {
    await waitForOverlaps(node, t, serialising);
    await body();
  } catch (e) {
    throw BlockError.from(e, { node: node.name, op, offset });
  } finally {
    if (dirtyBytes !== 0 && node.dirtyBitmaps.length !== 0) {
      markDirty(node, dirtyOffset, dirtyBytes);
    }
    node.tracked.end(t);
    if (--node.inFlight === 0) node.graph.notifyIdle();
  }
}

function slowWrite(
  node: Node,
  offset: number,
  bytes: number,
  qiov: IoVector,
  qiovOffset: number,
  flags: number,
): Promise<void> {
  const align = node.limits.requestAlignment;
  const start = alignDown(offset, align);
  const end = alignUp(offset + bytes, align);
  const rmw = start !== offset || end !== offset + bytes;
  return tracked(node, start, end, rmw, "write", offset, offset, bytes, () => {
    if (
      node.flags.detectZeroes !== "off" && (flags & ReqFlags.ZERO_WRITE) === 0 &&
      qiov.isZero(qiovOffset, bytes)
    ) {
      let zflags = flags & ~ReqFlags.MAY_UNMAP;
      if (node.flags.detectZeroes === "unmap") zflags |= ReqFlags.MAY_UNMAP;
      return zeroesLocked(node, offset, bytes, zflags);
    }
    if (!rmw) return alignedWrite(node, offset, bytes, qiov, qiovOffset, flags);
    return rmwWrite(node, offset, bytes, start, end, qiov, qiovOffset, flags);
  });
}

/**
 * A serialising request waits for every write started before it; other tracked writes wait
 * for earlier overlapping serialising ones. Untracked fast-path writes are in `inFlight`.
 */
async function waitForOverlaps(
  node: Node,
  t: ReturnType<Node["tracked"]["begin"]>,
  serialising: boolean,
): Promise<void> {
  if (serialising) {
    const fast = node.waitFastWrites();
    if (fast) await fast;
  }
  const w = node.tracked.waitSerialising(t);
  if (w) await w;
}

async function rmwWrite(
  node: Node,
  offset: number,
  bytes: number,
  start: number,
  end: number,
  qiov: IoVector,
  qiovOffset: number,
  flags: number,
): Promise<void> {
  const align = node.limits.requestAlignment;
  if (end - start === align) {
    // One block: read it, patch it, write it back.
    const block = new Uint8Array(align);
    const bq = IoVector.of(block);
    await alignedRead(node, start, align, bq, 0, 0);
    qiov.copyTo(qiovOffset, block, offset - start, bytes);
    await alignedWrite(node, start, align, bq, 0, flags);
    return;
  }
  const parts = new IoVector();
  if (start < offset) {
    const head = new Uint8Array(align);
    await alignedRead(node, start, align, IoVector.of(head), 0, 0);
    parts.add(head.subarray(0, offset - start));
  }
  qiov.slices(qiovOffset, bytes, parts.iov);
  parts.size += bytes;
  if (end > offset + bytes) {
    const tail = new Uint8Array(align);
    const tailStart = end - align;
    await alignedRead(node, tailStart, align, IoVector.of(tail), 0, 0);
    parts.add(tail.subarray(offset + bytes - tailStart));
  }
  await alignedWrite(node, start, end - start, parts, 0, flags);
}

/** An aligned write, split at max transfer, with FUA emulated by a flush when needed. */
async function alignedWrite(
  node: Node,
  offset: number,
  bytes: number,
  qiov: IoVector,
  qiovOffset: number,
  flags: number,
): Promise<void> {
  const inst = node.instance;
  if (!inst) throw new BlockError("ENOMEDIUM", `Node '${node.name}' is closed`);
  const emulateFua = (flags & ReqFlags.FUA) !== 0 &&
    ((inst.supportedWriteFlags ?? 0) & ReqFlags.FUA) === 0;
  const dflags = emulateFua ? flags & ~ReqFlags.FUA : flags;
  const max = maxChunk(node.limits.maxTransfer, node.limits.requestAlignment);
  for (let done = 0; done < bytes;) {
    const n = Math.min(bytes - done, max);
    try {
      await inst.pwritev(offset + done, n, qiov, qiovOffset + done, dflags);
    } finally {
      // Counted when it completes: a flush only covers writes that finished before it.
      node.writeGen++;
    }
    done += n;
  }
  if (emulateFua) await flushLocked(node);
}

// ---------------------------------------------------------------- write zeroes

/** Makes `bytes` bytes at `offset` read as zeros. */
export function pwriteZeroes(
  node: Node,
  offset: number,
  bytes: number,
  flags: number,
): Promise<void> {
  if (!node.instance) return closed(node, "write-zeroes");
  const err = checkRange(node, offset, bytes, "write-zeroes") ?? checkWritable(node, offset);
  if (err) return Promise.reject(err);
  if (bytes === 0) return Promise.resolve();
  const align = node.limits.requestAlignment;
  const start = alignDown(offset, align);
  const end = alignUp(offset + bytes, align);
  const rmw = start !== offset || end !== offset + bytes;
  return tracked(
    node,
    start,
    end,
    rmw,
    "write-zeroes",
    offset,
    offset,
    bytes,
    () => zeroesLocked(node, offset, bytes, flags),
  );
}

/** Write-zeroes with the caller already tracked: unaligned edges go through RMW. */
async function zeroesLocked(
  node: Node,
  offset: number,
  bytes: number,
  flags: number,
): Promise<void> {
  if (node.flags.discard !== "unmap") flags &= ~ReqFlags.MAY_UNMAP;
  const l = node.limits;
  const zalign = Math.max(l.pwriteZeroesAlignment || l.requestAlignment, l.requestAlignment);
  const end = offset + bytes;
  const alignedStart = Math.min(alignUp(offset, zalign), end);
  const alignedEnd = Math.max(alignDown(end, zalign), alignedStart);
  if (alignedStart > offset) await zeroRange(node, offset, alignedStart - offset, flags);
  if (alignedEnd > alignedStart) {
    await zeroAligned(node, alignedStart, alignedEnd - alignedStart, flags);
  }
  if (end > alignedEnd) await zeroRange(node, alignedEnd, end - alignedEnd, flags);
}

/** Zeroes an edge piece: through the driver when request-aligned, else by RMW with zeros. */
function zeroRange(node: Node, offset: number, bytes: number, flags: number): Promise<void> {
  const ra = node.limits.requestAlignment;
  if (isAligned(offset, ra) && isAligned(bytes, ra)) return zeroAligned(node, offset, bytes, flags);
  return writeZeroBuffer(node, offset, bytes, flags);
}

async function zeroAligned(
  node: Node,
  offset: number,
  bytes: number,
  flags: number,
): Promise<void> {
  const inst = node.instance!;
  if (inst.pwriteZeroes) {
    const l = node.limits;
    const max = l.maxPwriteZeroes > 0 ? maxChunk(l.maxPwriteZeroes, l.requestAlignment) : 1 << 30;
    const supported = inst.supportedZeroFlags ?? 0;
    const emulateFua = (flags & ReqFlags.FUA) !== 0 && (supported & ReqFlags.FUA) === 0;
    // Flags the driver does not declare are handled here: FUA by a flush, NO_FALLBACK by
    // refusing the fallback below; a driver that declares NO_FALLBACK (NBD's FAST_ZERO)
    // gets it passed down.
    const dflags = flags & ~(emulateFua ? ReqFlags.FUA : 0) &
      (supported | ~(ReqFlags.MAY_UNMAP | ReqFlags.FUA | ReqFlags.NO_FALLBACK));
    try {
      for (let done = 0; done < bytes;) {
        const n = Math.min(bytes - done, max);
        try {
          await inst.pwriteZeroes(offset + done, n, dflags);
        } finally {
          node.writeGen++;
        }
        done += n;
      }
      if (emulateFua) await flushLocked(node);
      return;
    } catch (e) {
      if (!(e instanceof BlockError) || e.code !== "ENOTSUP") throw e;
    }
  }
  if (flags & ReqFlags.NO_FALLBACK) {
    throw new BlockError("ENOTSUP", `Node '${node.name}' cannot write zeroes efficiently`);
  }
  await writeZeroBuffer(node, offset, bytes, flags);
}

/** Writes real zero bytes (the fallback), with RMW at unaligned edges. */
async function writeZeroBuffer(
  node: Node,
  offset: number,
  bytes: number,
  flags: number,
): Promise<void> {
  const align = node.limits.requestAlignment;
  const wflags = flags & ~(ReqFlags.MAY_UNMAP | ReqFlags.NO_FALLBACK | ReqFlags.ZERO_WRITE);
  const z = zeros();
  for (let done = 0; done < bytes;) {
    const n = Math.min(bytes - done, ZERO_BUFFER_SIZE);
    const o = offset + done;
    const q = IoVector.of(z.subarray(0, n));
    const s = alignDown(o, align);
    const e = alignUp(o + n, align);
    if (s !== o || e !== o + n) await rmwWrite(node, o, n, s, e, q, 0, wflags);
    else await alignedWrite(node, o, n, q, 0, wflags);
    done += n;
  }
}

// ---------------------------------------------------------------- discard

/** Discards `bytes` bytes at `offset`, when the node passes discards down (`discard=unmap`). */
export async function pdiscard(node: Node, offset: number, bytes: number): Promise<void> {
  const inst = node.instance;
  if (!inst) return closed(node, "discard");
  const err = checkRange(node, offset, bytes, "discard") ?? checkWritable(node, offset);
  if (err) throw err;
  if (bytes === 0 || node.flags.discard !== "unmap" || !inst.pdiscard) return;
  const l = node.limits;
  const align = Math.max(l.pdiscardAlignment || l.requestAlignment, l.requestAlignment);
  // Discard is advisory: the unaligned head and tail are left alone, except a tail that ends
  // the disk, which a format whose last cluster is partial (qcow2) discards. QEMU's
  // bdrv_co_pdiscard passes every unaligned head and tail down as requests of their own
  // (drivers then ignore what they cannot discard); this is the one that changes anything.
  const start = alignUp(offset, align);
  const end = offset + bytes === inst.getLength() && isAligned(offset + bytes, l.requestAlignment)
    ? offset + bytes
    : alignDown(offset + bytes, align);
  if (end <= start) return;
  const max = l.maxPdiscard > 0 ? maxChunk(l.maxPdiscard, align) : 1 << 30;
  const marked = end - start;
  await tracked(node, start, end, false, "discard", offset, start, marked, async () => {
    for (let o = start; o < end;) {
      const n = Math.min(end - o, max);
      try {
        await inst.pdiscard!(o, n);
      } catch (e) {
        if (!(e instanceof BlockError) || e.code !== "ENOTSUP") throw e;
      } finally {
        node.writeGen++;
      }
      o += n;
    }
  });
}

// ---------------------------------------------------------------- flush

/** Flushes `node` (unless nothing was written since the last flush) and its written children. */
export async function flush(node: Node): Promise<void> {
  if (!node.instance) return closed(node, "flush");
  node.inFlight++;
  try {
    await flushLocked(node);
  } catch (e) {
    throw BlockError.from(e, { node: node.name, op: "flush" });
  } finally {
    if (--node.inFlight === 0) node.graph.notifyIdle();
  }
}

async function flushLocked(node: Node): Promise<void> {
  const inst = node.instance;
  if (!inst) throw new BlockError("ENOMEDIUM", `Node '${node.name}' is closed`);
  // One flush at a time per node, so the flushed generation only moves forward.
  while (node.activeFlush) await node.activeFlush.catch(() => {});
  const gen = node.writeGen;
  const written = gen !== node.flushedGen;
  if (!written && node.flags.readOnly) return;
  // As QEMU's bdrv_co_flush: a flush that only hands the writes on to another host (its
  // flush_to_os, NBD's) is sent whenever asked, even under cache.no-flush, which skips only
  // a protocol's flush to disk; a layer with nothing written since its last flush skips its
  // own flush, and the children are asked in every case (each checks its own writes).
  const toOs = inst.flushesToOs === true && !node.flags.readOnly;
  const skip = node.flags.cacheNoFlush && node.driver.kind === "protocol" && !toOs;
  const body = (async () => {
    if (inst.flush && written && !skip) await inst.flush();
    else if (inst.flush && toOs) {
      // Nothing was written since the last flush succeeded: its failure loses nothing (a
      // server gone since then), so the node still closes cleanly.
      await inst.flush().catch(() => {});
    }
    for (const c of node.children) {
      if ((c.perm & WRITE_PERMS) !== 0 && c.node) await flush(c.node);
    }
  })();
  node.activeFlush = body;
  try {
    await body;
    node.flushedGen = gen;
  } finally {
    if (node.activeFlush === body) node.activeFlush = null;
  }
}

// ---------------------------------------------------------------- truncate

/** Resizes `node` to `size` bytes. */
export async function truncate(
  node: Node,
  size: number,
  exact: boolean,
  prealloc: PreallocMode,
): Promise<void> {
  const inst = node.instance;
  if (!inst) return closed(node, "truncate");
  if (!Number.isSafeInteger(size) || size < 0) {
    throw new BlockError("EINVAL", "Image size cannot be negative", {
      node: node.name,
      op: "truncate",
    });
  }
  if (node.flags.readOnly) {
    throw new BlockError("EACCES", "Image is read-only", { node: node.name, op: "truncate" });
  }
  if (!inst.truncate) {
    throw new BlockError("ENOTSUP", "Image format driver does not support resize", {
      node: node.name,
      op: "truncate",
    });
  }
  const old = inst.getLength();
  await tracked(node, Math.min(old, size), MAX_LENGTH, true, "truncate", size, 0, 0, async () => {
    try {
      await inst.truncate!(size, exact, prealloc);
    } finally {
      node.writeGen++;
    }
  });
  if (node.dirtyBitmaps.length !== 0) resizeDirtyBitmaps(node, inst.getLength());
  for (const p of [...node.parents]) p.parent.childResized?.(p);
}
