/**
 * What block status an export reports: `base:allocation` extents (HOLE and ZERO) from the
 * Backend's block status resolved down the backing chain, as QEMU's block status "above"
 * does, `qemu:allocation-depth` extents from isAllocatedAbove, and `qemu:dirty-bitmap:NAME`
 * extents from a dirty bitmap.
 *
 * @module
 */

import {
  type Backend,
  BlockStatusFlags,
  type ChainStatus,
  type DirtyBitmap,
  isAllocatedAbove,
  statusBelow,
} from "@blockgraph/core";
import { StateFlags } from "@blockgraph/drivers/nbd";

/** One run of bytes sharing a status. */
export interface Extent {
  /** The length in bytes. */
  length: number;
  /** The context's flags (`base:allocation`) or value (`qemu:allocation-depth`). */
  flags: number;
}

/**
 * The status of `[offset, offset+bytes)` through the backend's chain (core's
 * `blockStatusAbove` with no base, after the backend's own checks). At once when the layers
 * have their answers at hand, else a promise (see `Node.blockStatusNow`).
 */
export function statusAbove(
  backend: Backend,
  offset: number,
  bytes: number,
): ChainStatus | Promise<ChainStatus> {
  const n = backend.node!;
  const top = backend.blockStatusNow(offset, bytes, true);
  return top instanceof Promise
    ? top.then((st) => statusBelow(n, null, offset, st))
    : statusBelow(n, null, offset, top);
}

/** How many data runs an export remembers: one per client stream (nbdcopy opens four). */
const DATA_RUNS = 8;

/**
 * The last few runs that block status said hold data (neither a hole nor zeros), so that
 * sparse reads inside one skip the query (for a file, an lseek pair per read). Answering
 * "data" is always correct for a read, whatever changed since: the bytes are read and sent as
 * they are; only the hole chunks a fresh answer might have allowed are lost. So the runs need
 * not follow every writer of the node; the export forgets them when its own clients trim or
 * write zeroes.
 */
export class DataRuns {
  readonly #start = new Float64Array(DATA_RUNS);
  readonly #end = new Float64Array(DATA_RUNS);
  #next = 0;

  /** Whether `[offset, offset+bytes)` lies inside one run. */
  covers(offset: number, bytes: number): boolean {
    for (let i = 0; i < DATA_RUNS; i++) {
      if (offset >= this.#start[i]! && offset + bytes <= this.#end[i]!) return true;
    }
    return false;
  }

  /** Remembers `[offset, offset+bytes)` as data, in place of the oldest run. */
  note(offset: number, bytes: number): void {
    const i = this.#next;
    this.#next = (i + 1) % DATA_RUNS;
    this.#start[i] = offset;
    this.#end[i] = offset + bytes;
  }

  /** Forgets every run that overlaps `[offset, offset+bytes)`. */
  forget(offset: number, bytes: number): void {
    for (let i = 0; i < DATA_RUNS; i++) {
      if (offset < this.#end[i]! && offset + bytes > this.#start[i]!) {
        this.#start[i] = this.#end[i] = 0;
      }
    }
  }
}

/** `base:allocation` flags for BlockStatusFlags bits. */
export function allocationFlags(status: number): number {
  return (status & BlockStatusFlags.DATA ? 0 : StateFlags.HOLE) |
    (status & BlockStatusFlags.ZERO ? StateFlags.ZERO : 0);
}

/**
 * Extents of `[offset, offset+bytes)` for one context, at most `maxExtents` of them;
 * neighbouring runs with the same flags are merged.
 */
export async function collectExtents(
  backend: Backend,
  depth: boolean,
  offset: number,
  bytes: number,
  maxExtents: number,
): Promise<Extent[]> {
  const out: Extent[] = [];
  const end = offset + bytes;
  while (offset < end) {
    let flags: number;
    let pnum: number;
    if (depth) {
      const node = backend.node;
      if (!node) break;
      const a = await isAllocatedAbove(node, null, offset, end - offset);
      flags = a.allocated ? a.depth : 0;
      pnum = a.pnum;
    } else {
      const now = statusAbove(backend, offset, end - offset);
      const st = now instanceof Promise ? await now : now;
      flags = allocationFlags(st.status);
      pnum = st.pnum;
    }
    if (pnum <= 0) break;
    pnum = Math.min(pnum, end - offset);
    const last = out[out.length - 1];
    if (last && last.flags === flags && last.length + pnum <= 0xffffffff) {
      last.length += pnum;
    } else {
      if (out.length === maxExtents) break;
      out.push({ length: pnum, flags });
    }
    offset += pnum;
  }
  return out;
}

/** The `qemu:dirty-bitmap:NAME` flag of a dirty range (NBD_STATE_DIRTY). */
export const STATE_DIRTY = 1;

/**
 * `qemu:dirty-bitmap:NAME` extents of `[offset, offset+bytes)`: dirty runs (flag 1) and
 * the clean runs between them (0), at most `maxExtents`, as QEMU's server reports them.
 * Dirty runs are whole granules clipped to the range; past the bitmap's end is clean.
 */
export function bitmapExtents(
  bitmap: DirtyBitmap,
  offset: number,
  bytes: number,
  maxExtents: number,
): Extent[] {
  const out: Extent[] = [];
  const add = (length: number, flags: number): boolean => {
    if (length === 0) return true;
    const last = out[out.length - 1];
    if (last && last.flags === flags && last.length + length <= 0xffffffff) {
      last.length += length;
      return true;
    }
    if (out.length === maxExtents) return false;
    out.push({ length, flags });
    return true;
  };
  const end = offset + bytes;
  let start = offset;
  for (;;) {
    const area = bitmap.hbitmap.nextDirtyArea(start, end - start, 0x7fffffff);
    if (!area) break;
    if (!add(area.offset - start, 0) || !add(area.bytes, STATE_DIRTY)) return out;
    start = area.offset + area.bytes;
  }
  add(end - start, 0);
  return out;
}
