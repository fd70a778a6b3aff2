/**
 * Block status: what a node holds where (data, zeros, unallocated), resolved through RAW
 * answers and backing chains.
 *
 * @module
 */

import { type BlockStatus, BlockStatusFlags } from "./driver.ts";
import { BlockError } from "./errors.ts";
import type { Node } from "./node.ts";
import { checkRange, closed } from "./request_check.ts";

/**
 * Allocation status of `node` at `offset` for this layer, with the generic bits (ALLOCATED,
 * EOF) added and RAW answers resolved through the child they name.
 */
export function blockStatus(
  node: Node,
  offset: number,
  bytes: number,
  wantZero: boolean,
): Promise<BlockStatus> {
  return promised(() => blockStatusNow(node, offset, bytes, wantZero));
}

/** What `f` answers or promises, as a promise; what it throws, as a rejection. */
export function promised<T>(f: () => T | Promise<T>): Promise<T> {
  try {
    const r = f();
    return r instanceof Promise ? r : Promise.resolve(r);
  } catch (e) {
    return Promise.reject(e);
  }
}

/**
 * {@link blockStatus} answered at once where every layer it asks answers at once (a qcow2
 * whose L2 table is cached, a memory node), else its promise: a walk over many small extents
 * (`img map`, an NBD client's block status) need not wait once per extent. What it finds
 * wrong at once it throws.
 */
export function blockStatusNow(
  node: Node,
  offset: number,
  bytes: number,
  wantZero: boolean,
): BlockStatus | Promise<BlockStatus> {
  if (!node.instance) return closed(node, "block-status");
  const err = checkRange(node, offset, bytes, "block-status");
  if (err) throw err;
  const r = statusOf(node, offset, bytes, wantZero, 0);
  if (!(r instanceof Promise)) return r;
  // Counted in flight like any request: drain and close wait for it.
  node.inFlight++;
  return r.finally(() => {
    if (--node.inFlight === 0) node.graph.notifyIdle();
  });
}

/** RAW answers may name another node; a chain this deep is a driver bug (a loop). */
const MAX_RAW_DEPTH = 64;

function statusOf(
  node: Node,
  offset: number,
  bytes: number,
  wantZero: boolean,
  depth: number,
): BlockStatus | Promise<BlockStatus> {
  const inst = node.instance;
  if (!inst) return closed(node, "block-status");
  const length = inst.getLength();
  if (offset >= length || bytes === 0) return { status: BlockStatusFlags.EOF, pnum: 0 };
  bytes = Math.min(bytes, length - offset);
  let st: BlockStatus | Promise<BlockStatus>;
  if (inst.blockStatus) {
    st = inst.blockStatus(wantZero, offset, bytes);
  } else if (node.children.length === 0) {
    st = {
      status: BlockStatusFlags.DATA | BlockStatusFlags.OFFSET_VALID,
      pnum: bytes,
      map: offset,
      file: node,
    };
  } else {
    const child = node.primaryChild?.node;
    st = child
      ? {
        status: BlockStatusFlags.RAW | BlockStatusFlags.OFFSET_VALID,
        pnum: bytes,
        map: offset,
        file: child,
      }
      : { status: BlockStatusFlags.DATA, pnum: bytes };
  }
  return st instanceof Promise
    ? st.then((s) => resolved(node, offset, bytes, length, wantZero, depth, s))
    : resolved(node, offset, bytes, length, wantZero, depth, st);
}

/** A driver's answer checked, a RAW one resolved through its file, and the generic bits set. */
function resolved(
  node: Node,
  offset: number,
  bytes: number,
  length: number,
  wantZero: boolean,
  depth: number,
  st: BlockStatus,
): BlockStatus | Promise<BlockStatus> {
  if (st.pnum <= 0 || st.pnum > bytes) {
    throw new BlockError(
      "EIO",
      `Driver of node '${node.name}' answered block status with ${st.pnum} bytes`,
    );
  }
  if (st.status & BlockStatusFlags.RECURSE) {
    st.status &= ~BlockStatusFlags.RECURSE;
    const F = BlockStatusFlags;
    if (
      wantZero && st.file && st.file !== node && st.map !== undefined &&
      (st.status & (F.DATA | F.ZERO | F.OFFSET_VALID)) === (F.DATA | F.OFFSET_VALID)
    ) {
      // The file's answer only adds to this one: when it fails, this one stands (QEMU
      // ignores the error too).
      const outer = st;
      const plain = () => generic(node, offset, length, wantZero, outer);
      let inner: BlockStatus | Promise<BlockStatus>;
      try {
        inner = statusOf(st.file, st.map, st.pnum, wantZero, depth + 1);
      } catch {
        return plain();
      }
      return inner instanceof Promise
        ? inner.then((i) => recursed(node, offset, length, wantZero, outer, i), plain)
        : recursed(node, offset, length, wantZero, outer, inner);
    }
  }
  if (!(st.status & BlockStatusFlags.RAW)) return generic(node, offset, length, wantZero, st);
  if (!st.file || st.map === undefined) {
    throw new BlockError("EIO", `Driver of node '${node.name}' answered RAW without a file`);
  }
  if (st.file === node || depth >= MAX_RAW_DEPTH) {
    throw new BlockError("EIO", `Block status of node '${node.name}' loops through RAW answers`);
  }
  const pnum = st.pnum;
  const inner = statusOf(st.file, st.map, pnum, wantZero, depth + 1);
  return inner instanceof Promise
    ? inner.then((i) => throughFile(node, offset, length, wantZero, pnum, i))
    : throughFile(node, offset, length, wantZero, pnum, inner);
}

/** A RAW answer for `pnum` bytes, from what its file answered (`inner`). */
function throughFile(
  node: Node,
  offset: number,
  length: number,
  wantZero: boolean,
  pnum: number,
  inner: BlockStatus,
): BlockStatus {
  return generic(
    node,
    offset,
    length,
    wantZero,
    // Past the end of the file: reads there return zeros.
    inner.status & BlockStatusFlags.EOF && inner.pnum === 0
      ? { status: BlockStatusFlags.ZERO, pnum }
      : { ...inner, status: inner.status & ~BlockStatusFlags.EOF },
  );
}

/**
 * A data answer (`outer`) refined by what its file says at the mapped offset (`inner`), as
 * QEMU's `bdrv_co_block_status` does for BDRV_BLOCK_RECURSE: a hole there makes the range
 * read as zeros, and the answer ends where the file's does. Past the file's end (or in a
 * hole that reaches it) the whole range reads as zeros.
 */
function recursed(
  node: Node,
  offset: number,
  length: number,
  wantZero: boolean,
  outer: BlockStatus,
  inner: BlockStatus,
): BlockStatus {
  const F = BlockStatusFlags;
  if (inner.status & F.EOF && (inner.pnum === 0 || inner.status & F.ZERO)) {
    outer.status |= F.ZERO;
  } else {
    outer.pnum = inner.pnum;
    outer.status |= inner.status & F.ZERO;
  }
  return generic(node, offset, length, wantZero, outer);
}

/** Sets ALLOCATED, ZERO where an unallocated range reads zeros, and EOF. */
function generic(
  node: Node,
  offset: number,
  length: number,
  wantZero: boolean,
  st: BlockStatus,
): BlockStatus {
  if (st.status & (BlockStatusFlags.DATA | BlockStatusFlags.ZERO)) {
    // Allocated means: this layer answered for the range.
    st.status |= BlockStatusFlags.ALLOCATED;
  } else if (node.driver.supportsBacking) {
    // Unallocated: reads go to the backing file, or are zeros without one or past its end.
    const backing = node.cowChild?.node;
    if (!backing) st.status |= BlockStatusFlags.ZERO;
    else if (wantZero && offset >= backing.getLength()) st.status |= BlockStatusFlags.ZERO;
  }
  if (offset + st.pnum === length) st.status |= BlockStatusFlags.EOF;
  return st;
}
