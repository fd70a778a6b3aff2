/**
 * Block status over a whole backing chain for qemu-img's jobs: core's `blockStatusAbove`
 * from the first layer below any filters on top, clipped to the top's length.
 *
 * @module
 */

import { blockStatusAbove, type ChainStatus, type Node } from "@blockgraph/core";
import { skipFilters } from "./map.ts";

/**
 * The status of `[offset, offset+bytes)` in `top` and its chain down to `base` (exclusive;
 * `null`: the whole chain); `wantZero` asks drivers to look for zeros.
 */
export function chainStatus(
  top: Node,
  offset: number,
  bytes: number,
  base: Node | null = null,
  wantZero = true,
): Promise<ChainStatus> {
  return blockStatusAbove(
    skipFilters(top),
    base,
    offset,
    Math.min(bytes, top.getLength() - offset),
    wantZero,
  );
}
