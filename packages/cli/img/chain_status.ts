/**
 * Block status over a whole backing chain, as QEMU's `bdrv_block_status_above` with no base
 * answers it: the status of the first layer that has the range allocated (or the bottom
 * layer's), zeros synthesised past a short layer's end, and EOF for the top's end.
 *
 * @module
 */

import { BlockStatusFlags, type Node } from "@blockgraph/core";
import { skipFilters } from "./map.ts";

/** The chain's answer for a range. */
export interface ChainStatus {
  /** {@link BlockStatusFlags} bits. */
  status: number;
  /** Bytes from the offset with this status. */
  pnum: number;
  /** How many layers below the top answered (0: the top). */
  depth: number;
  /** The layer that answered. */
  node: Node;
}

/** The next layer below `n`: its COW child, or the child a filter passes through. */
export function belowLayer(n: Node): Node | null {
  return n.cowChild?.node ?? n.filteredChild?.node ?? null;
}

/**
 * The status of `[offset, offset+bytes)` in `top` and its chain down to `base` (exclusive;
 * `null`: the whole chain); `wantZero` asks drivers to look for zeros.
 */
export async function chainStatus(
  top: Node,
  offset: number,
  bytes: number,
  base: Node | null = null,
  wantZero = true,
): Promise<ChainStatus> {
  const eof = top.getLength();
  let node = skipFilters(top);
  bytes = Math.min(bytes, eof - offset);
  let st = await node.blockStatus(offset, bytes, wantZero);
  let status = st.status;
  let pnum = st.pnum;
  let depth = 0;
  if (!(status & BlockStatusFlags.ALLOCATED)) {
    for (let p = belowLayer(node); p && p !== base; p = belowLayer(p)) {
      depth++;
      node = p;
      if (offset >= p.getLength()) {
        status = BlockStatusFlags.ZERO | BlockStatusFlags.ALLOCATED;
        break;
      }
      st = await p.blockStatus(offset, Math.min(pnum, p.getLength() - offset), wantZero);
      status = st.status;
      if (status & BlockStatusFlags.ALLOCATED) {
        status &= ~BlockStatusFlags.EOF;
        pnum = st.pnum;
        break;
      }
      pnum = Math.min(pnum, st.pnum);
    }
    status &= ~BlockStatusFlags.EOF;
  }
  if (offset + pnum === eof) status |= BlockStatusFlags.EOF;
  else status &= ~BlockStatusFlags.EOF;
  return { status, pnum, depth, node };
}
