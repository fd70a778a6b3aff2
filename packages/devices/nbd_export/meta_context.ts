/**
 * Metadata contexts an export offers (`base:allocation` always, `qemu:allocation-depth` when
 * the export was made with `allocation-depth`, and `qemu:dirty-bitmap:NAME` for each bitmap
 * the export was given) and how the queries of NBD_OPT_LIST_META_CONTEXT and
 * NBD_OPT_SET_META_CONTEXT select them, as QEMU's server does. Ids are fixed whichever
 * contexts are offered (QEMU's numbering).
 *
 * @module
 */

import type { DirtyBitmap } from "@blockgraph/core";
import { META_BASE_ALLOCATION, META_QEMU_ALLOCATION_DEPTH } from "@blockgraph/drivers/nbd";

/** A selectable metadata context: its id on the wire and its name. */
export interface MetaContext {
  /** The id sent with NBD_REP_META_CONTEXT and in block status chunks. */
  readonly id: number;
  /** The context name. */
  readonly name: string;
  /** For `qemu:dirty-bitmap:NAME`, the bitmap whose dirty ranges it reports. */
  readonly bitmap?: DirtyBitmap;
}

/** Context id of `base:allocation`. */
export const BASE_ALLOCATION_ID = 0;
/** Context id of `qemu:allocation-depth`. */
export const ALLOCATION_DEPTH_ID = 1;
/** Context id of the export's first dirty bitmap; the others follow (QEMU's numbering). */
export const DIRTY_BITMAP_FIRST_ID = 2;
/** The prefix of dirty bitmap contexts. */
export const META_DIRTY_BITMAP_PREFIX = "qemu:dirty-bitmap:";

/** `base:allocation`, which every export offers. */
export const BASE_ALLOCATION_CONTEXT: MetaContext = {
  id: BASE_ALLOCATION_ID,
  name: META_BASE_ALLOCATION,
};

/** `qemu:allocation-depth`, offered by exports made with `allocation-depth`. */
export const ALLOCATION_DEPTH_CONTEXT: MetaContext = {
  id: ALLOCATION_DEPTH_ID,
  name: META_QEMU_ALLOCATION_DEPTH,
};

/** What decides an export's contexts. */
export interface ContextSource {
  /** The dirty bitmaps offered as `qemu:dirty-bitmap:NAME`. */
  readonly bitmaps?: readonly DirtyBitmap[];
  /** Whether `qemu:allocation-depth` is offered (QEMU's `allocation-depth`, default off). */
  readonly allocationDepth?: boolean;
}

/** The contexts of an export, in id order. */
export function exportContexts(exp: ContextSource = {}): MetaContext[] {
  return [
    BASE_ALLOCATION_CONTEXT,
    ...(exp.allocationDepth ? [ALLOCATION_DEPTH_CONTEXT] : []),
    ...(exp.bitmaps ?? []).map((bitmap, i) => ({
      id: DIRTY_BITMAP_FIRST_ID + i,
      name: META_DIRTY_BITMAP_PREFIX + (bitmap.name ?? ""),
      bitmap,
    })),
  ];
}

/**
 * The contexts `queries` select among those `exp` offers, in id order.
 * With `list` (NBD_OPT_LIST_META_CONTEXT) no queries mean every context, and a namespace
 * alone (`base:`, `qemu:`, `qemu:dirty-bitmap:`) means every context in it;
 * NBD_OPT_SET_META_CONTEXT takes full names only. Unknown queries select nothing.
 */
export function selectContexts(
  queries: readonly string[],
  list: boolean,
  exp: ContextSource = {},
): MetaContext[] {
  const all = exportContexts(exp);
  if (list && queries.length === 0) return all;
  const chosen = new Set<number>();
  for (const q of queries) {
    for (const c of all) {
      if (q === c.name) chosen.add(c.id);
      else if (list) {
        if (q === "base:" && c.id === BASE_ALLOCATION_ID) chosen.add(c.id);
        if (q === "qemu:" && c.id !== BASE_ALLOCATION_ID) chosen.add(c.id);
        if (q === META_DIRTY_BITMAP_PREFIX && c.bitmap) chosen.add(c.id);
      }
    }
  }
  return all.filter((c) => chosen.has(c.id));
}
