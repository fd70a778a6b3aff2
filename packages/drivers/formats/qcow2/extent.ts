/**
 * What guest clusters hold: the kind of an L2 entry, and extents (runs of clusters of one
 * kind, contiguous on the host for data) read from a cached L2 table.
 *
 * @module
 */

import {
  COMPRESSED_HI,
  COPIED_HI,
  entryOffset,
  hex,
  KIND_DATA_FILE,
  KIND_EXTL2,
  viewOf,
  ZERO_LO,
} from "./format.ts";

/**
 * What a guest cluster holds; with extended L2 entries, what a subcluster holds, where
 * `unallocated-alloc` is an unallocated subcluster of a cluster that has a host cluster (it
 * reads from the backing file; QEMU's `QCOW2_SUBCLUSTER_UNALLOCATED_ALLOC`).
 */
export type ClusterKind =
  | "unallocated"
  | "unallocated-alloc"
  | "zero"
  | "zero-alloc"
  | "normal"
  | "compressed";

/** A run of guest bytes of one kind, from one L2 table. */
export interface Extent {
  /** The kind of every cluster in the run. */
  kind: ClusterKind;
  /** Bytes from the queried offset. */
  bytes: number;
  /** For normal, zero-alloc and unallocated-alloc: the host offset of the queried byte. */
  host: number;
  /** Whether every cluster's refcount is one (COPIED). */
  copied: boolean;
  /** The first cluster's L2 entry, high and low words. */
  hi: number;
  /** See `hi`. */
  lo: number;
}

/**
 * Classifies an L2 entry; `mode` is the image's `kindMode` (`KIND_EXTL2`, `KIND_DATA_FILE`).
 * With extended L2 entries the kind is the cluster's (normal: it has a host cluster) and the
 * subcluster bitmap says what each subcluster holds.
 */
export function classify(hi: number, lo: number, mode = 0): ClusterKind {
  if (hi & COMPRESSED_HI) return "compressed";
  const off = entryOffset(hi, lo);
  if ((lo & ZERO_LO) && !(mode & KIND_EXTL2)) return off !== 0 ? "zero-alloc" : "zero";
  if (off !== 0) return "normal";
  return (mode & KIND_DATA_FILE) && (hi & COPIED_HI) ? "normal" : "unallocated";
}

/** What `extentIn` needs from the image. */
export interface ExtentSource {
  /** The cluster size. */
  readonly cs: number;
  /** Entries per L2 table. */
  readonly l2Entries: number;
  /** How entries are classified (`classify`'s mode). */
  readonly kindMode: number;
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
  const kind = classify(hi, lo, image.kindMode);
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
      if (classify(h2, l2, image.kindMode) !== kind || ((h2 & COPIED_HI) !== 0) !== copied) break;
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

/** What `extentInExt` needs: an {@link ExtentSource} with subclusters. */
export interface SubclusterSource extends ExtentSource {
  /** The subcluster size (the cluster size / 32). */
  readonly sc: number;
}

/**
 * Why an extended L2 entry is invalid (QEMU's `QCOW2_SUBCLUSTER_INVALID`), or null: a
 * compressed cluster's bitmap must be zero, an allocated cluster's subclusters cannot be both
 * allocated and zero, and an unallocated cluster has no allocated subclusters.
 */
export function invalidBitmap(
  kind: ClusterKind,
  zeroBits: number,
  allocBits: number,
): string | null {
  if (kind === "compressed") {
    return (zeroBits | allocBits) !== 0
      ? "compressed cluster has a non-zero subcluster bitmap"
      : null;
  }
  if (kind === "normal") {
    return (zeroBits & allocBits) !== 0
      ? "subclusters are both allocated and zero in the subcluster bitmap"
      : null;
  }
  return allocBits !== 0 ? "unallocated cluster has allocated subclusters" : null;
}

/** The error for an invalid extended L2 entry, naming the table and index. */
export function invalidEntry(
  image: ExtentSource,
  why: string,
  l2Off: number,
  l2i: number,
): Error {
  return image.corrupt(
    `Invalid cluster entry found (L2 offset: ${hex(l2Off)}, L2 index: ${hex(l2i)}): ${why}`,
  );
}

/** What subcluster `s` of an extended entry whose cluster is of `kind` holds. */
export function subclusterKind(
  kind: ClusterKind,
  zeroBits: number,
  allocBits: number,
  s: number,
): ClusterKind {
  const bit = 1 << s;
  if (kind === "normal") {
    return (zeroBits & bit) ? "zero-alloc" : (allocBits & bit) ? "normal" : "unallocated-alloc";
  }
  if (kind === "unallocated") return (zeroBits & bit) ? "zero" : "unallocated";
  return kind;
}

/**
 * `extentIn` for extended L2 entries (16 bytes each): the run of subclusters of one kind from
 * guest `offset`, across clusters of the same table (contiguous on the host for data and
 * preallocated zeros). Invalid bitmaps mark the image corrupt.
 */
export function extentInExt(
  image: SubclusterSource,
  table: Uint8Array | null,
  l2Off: number,
  offset: number,
  bytes: number,
): Extent {
  const cs = image.cs;
  const sc = image.sc;
  const E = image.l2Entries;
  const g = Math.floor(offset / cs);
  let l2i = g % E;
  const inCluster = offset - g * cs;
  const maxBytes = Math.min(bytes, (E - l2i) * cs - inCluster);
  if (table === null) {
    return { kind: "unallocated", bytes: maxBytes, host: 0, copied: false, hi: 0, lo: 0 };
  }
  const view = viewOf(table);
  let s = Math.floor(inCluster / sc);
  let first: Extent | null = null;
  let n = 0;
  let next = 0;
  outer: for (; l2i < E && n < maxBytes; l2i++, s = 0) {
    const p = l2i * 16;
    const hi = view.getUint32(p);
    const lo = view.getUint32(p + 4);
    const zb = view.getUint32(p + 8);
    const ab = view.getUint32(p + 12);
    const kind = classify(hi, lo, image.kindMode);
    const why = invalidBitmap(kind, zb, ab);
    if (why !== null) throw invalidEntry(image, why, l2Off, l2i);
    const base = entryOffset(hi, lo);
    if (kind === "normal" && base % cs !== 0) {
      throw image.corrupt(
        `Cluster allocation offset ${hex(base)} unaligned (L2 offset: ${hex(l2Off)}, L2 index: ${
          hex(l2i)
        })`,
      );
    }
    const copied = (hi & COPIED_HI) !== 0;
    if (kind === "compressed") {
      if (first) break;
      const b = Math.min(cs - inCluster, maxBytes);
      return { kind, bytes: b, host: 0, copied, hi, lo };
    }
    for (; s < 32 && n < maxBytes; s++) {
      const k = subclusterKind(kind, zb, ab, s);
      const mapped = kind === "normal";
      const host = mapped ? base + s * sc : 0;
      if (first === null) {
        const inSub = inCluster - s * sc;
        first = { kind: k, bytes: 0, host: mapped ? host + inSub : 0, copied, hi, lo };
        n = sc - inSub;
        next = host + sc;
        continue;
      }
      if (k !== first.kind) break outer;
      if (mapped && (host !== next || copied !== first.copied)) break outer;
      n += sc;
      next = host + sc;
    }
  }
  first!.bytes = Math.min(n, maxBytes);
  return first!;
}
