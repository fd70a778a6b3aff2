/**
 * What guest clusters hold: the kind of an L2 entry, and extents (runs of clusters of one
 * kind, contiguous on the host for data) read from a cached L2 table.
 *
 * @module
 */

import { COMPRESSED_HI, COPIED_HI, entryOffset, hex, viewOf, ZERO_LO } from "./format.ts";

/** What a guest cluster holds. */
export type ClusterKind = "unallocated" | "zero" | "zero-alloc" | "normal" | "compressed";

/** A run of guest bytes of one kind, from one L2 table. */
export interface Extent {
  /** The kind of every cluster in the run. */
  kind: ClusterKind;
  /** Bytes from the queried offset. */
  bytes: number;
  /** For normal and zero-alloc: the host offset of the queried byte. */
  host: number;
  /** Whether every cluster's refcount is one (COPIED). */
  copied: boolean;
  /** The first cluster's L2 entry, high and low words. */
  hi: number;
  /** See `hi`. */
  lo: number;
}

/** Classifies an L2 entry. */
export function classify(hi: number, lo: number): ClusterKind {
  if (hi & COMPRESSED_HI) return "compressed";
  const off = entryOffset(hi, lo);
  if (lo & ZERO_LO) return off !== 0 ? "zero-alloc" : "zero";
  return off !== 0 ? "normal" : "unallocated";
}

/** What `extentIn` needs from the image. */
export interface ExtentSource {
  /** The cluster size. */
  readonly cs: number;
  /** Entries per L2 table. */
  readonly l2Entries: number;
  /** Marks the image corrupt; returns the error to throw. */
  corrupt(message: string, offset?: number, size?: number): Error;
}

/**
 * The extent at guest `offset` (at most `bytes`, within one L2 table) as `table` (at host
 * `l2Off`; null for none) describes it.
 */
export function extentIn(
  image: ExtentSource,
  table: Uint8Array | null,
  l2Off: number,
  offset: number,
  bytes: number,
): Extent {
  const cs = image.cs;
  const g = Math.floor(offset / cs);
  let l2i = g % image.l2Entries;
  const inCluster = offset - g * cs;
  const maxBytes = Math.min(bytes, (image.l2Entries - l2i) * cs - inCluster);
  if (table === null) {
    return { kind: "unallocated", bytes: maxBytes, host: 0, copied: false, hi: 0, lo: 0 };
  }
  const view = viewOf(table);
  const hi = view.getUint32(l2i * 8);
  const lo = view.getUint32(l2i * 8 + 4);
  const kind = classify(hi, lo);
  const base = entryOffset(hi, lo);
  if ((kind === "normal" || kind === "zero-alloc") && base % cs !== 0) {
    throw image.corrupt(
      `Cluster allocation offset ${hex(base)} unaligned (L2 offset: ${hex(l2Off)}, L2 index: ${
        hex(l2i)
      })`,
    );
  }
  const copied = (hi & COPIED_HI) !== 0;
  let n = cs - inCluster;
  if (kind !== "compressed" && kind !== "zero-alloc") {
    let next = base + cs;
    for (l2i++; n < maxBytes && l2i < image.l2Entries; l2i++) {
      const h2 = view.getUint32(l2i * 8);
      const l2 = view.getUint32(l2i * 8 + 4);
      if (classify(h2, l2) !== kind || ((h2 & COPIED_HI) !== 0) !== copied) break;
      if (kind === "normal" && entryOffset(h2, l2) !== next) break;
      next += cs;
      n += cs;
    }
  }
  return {
    kind,
    bytes: Math.min(n, maxBytes),
    host: kind === "normal" || kind === "zero-alloc" ? base + inCluster : 0,
    copied,
    hi,
    lo,
  };
}
