/**
 * Metadata contexts an export offers (`base:allocation`, `qemu:allocation-depth`) and how the
 * queries of NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT select them. Dirty bitmap
 * contexts (`qemu:dirty-bitmap:NAME`) are not offered yet: such queries select nothing, as
 * for an unknown bitmap.
 *
 * @module
 */

import { META_BASE_ALLOCATION, META_QEMU_ALLOCATION_DEPTH } from "@blockgraph/drivers/nbd";

/** A selectable metadata context: its id on the wire and its name. */
export interface MetaContext {
  /** The id sent with NBD_REP_META_CONTEXT and in block status chunks. */
  readonly id: number;
  /** The context name. */
  readonly name: string;
}

/** Context id of `base:allocation`. */
export const BASE_ALLOCATION_ID = 0;
/** Context id of `qemu:allocation-depth`. */
export const ALLOCATION_DEPTH_ID = 1;

/** The contexts every export offers. */
export const EXPORT_CONTEXTS: readonly MetaContext[] = [
  { id: BASE_ALLOCATION_ID, name: META_BASE_ALLOCATION },
  { id: ALLOCATION_DEPTH_ID, name: META_QEMU_ALLOCATION_DEPTH },
];

/**
 * The contexts `queries` select, in id order. With `list` (NBD_OPT_LIST_META_CONTEXT) no
 * queries mean every context, and a namespace alone (`base:`, `qemu:`) means every context in
 * it; NBD_OPT_SET_META_CONTEXT takes full names only. Unknown queries select nothing.
 */
export function selectContexts(queries: readonly string[], list: boolean): MetaContext[] {
  if (list && queries.length === 0) return [...EXPORT_CONTEXTS];
  const chosen = new Set<number>();
  for (const q of queries) {
    if (q === META_BASE_ALLOCATION || (list && q === "base:")) chosen.add(BASE_ALLOCATION_ID);
    if (q === META_QEMU_ALLOCATION_DEPTH || (list && q === "qemu:")) {
      chosen.add(ALLOCATION_DEPTH_ID);
    }
  }
  return EXPORT_CONTEXTS.filter((c) => chosen.has(c.id));
}
