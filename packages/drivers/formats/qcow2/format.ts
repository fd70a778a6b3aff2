/**
 * On-disk constants of qcow2 (QEMU's docs/interop/qcow2.rst) and helpers for the big-endian
 * 64-bit fields, kept as JavaScript numbers: every offset blockgraph handles is below 2^53.
 *
 * @module
 */

/** "QFI\xfb": the first four bytes of every qcow2 image. */
export const QCOW2_MAGIC = 0x514649fb;
/** The smallest cluster size, as a power of two (512 bytes). */
export const MIN_CLUSTER_BITS = 9;
/** The largest cluster size QEMU opens, as a power of two (2 MiB). */
export const MAX_CLUSTER_BITS = 21;
/** QEMU's limit on the L1 table: 32 MiB. */
export const MAX_L1_BYTES = 32 * 1024 * 1024;
/** QEMU's limit on the refcount table: 8 MiB. */
export const MAX_REFTABLE_BYTES = 8 * 1024 * 1024;
/** The longest backing file name the format allows. */
export const MAX_BACKING_NAME = 1023;
/** QEMU's limit on internal snapshots. */
export const MAX_SNAPSHOTS = 65536;
/** The length of a version 2 header. */
export const V2_HEADER_LENGTH = 72;
/** The length of a version 3 header with the compression type field, padded to 8. */
export const V3_HEADER_LENGTH = 112;

/** Incompatible feature bits. */
export const Incompat = {
  /** Refcounts may be inconsistent (lazy refcounts were in use). */
  DIRTY: 1,
  /** Metadata may be corrupt: the image must not be written. */
  CORRUPT: 2,
  /** Guest data lives in an external data file. */
  DATA_FILE: 4,
  /** A compression type other than zlib is used. */
  COMPRESSION: 8,
  /** L2 entries carry subcluster bitmaps. */
  EXTL2: 16,
} as const;
/** Every incompatible bit the format defines. */
export const INCOMPAT_KNOWN = 0x1f;
/** Compatible feature bit 0: lazy refcounts. */
export const COMPAT_LAZY_REFCOUNTS = 1;
/** Autoclear bit 0: the bitmaps extension is consistent. */
export const AUTOCLEAR_BITMAPS = 1;
/** Autoclear bit 1: the external data file is a consistent raw image. */
export const AUTOCLEAR_DATA_FILE_RAW = 2;

/** Header extension types. */
export const Ext = {
  END: 0,
  BACKING_FORMAT: 0xe2792aca,
  FEATURE_TABLE: 0x6803f857,
  BITMAPS: 0x23852875,
  CRYPTO_HEADER: 0x0537be77,
  DATA_FILE: 0x44415441,
} as const;

/** Bit 63 of L1 and L2 entries: the refcount is exactly one (high word). */
export const COPIED_HI = 0x80000000;
/** Bit 62 of L2 entries: the cluster is compressed (high word). */
export const COMPRESSED_HI = 0x40000000;
/** Bit 0 of standard L2 entries: the cluster reads as zeros (low word). */
export const ZERO_LO = 1;
/** Subclusters per cluster with extended L2 entries. */
export const SUBCLUSTERS = 32;
/** The smallest cluster size `create` accepts with extended L2 entries (QEMU's 16 KiB). */
export const MIN_EXTL2_CREATE_CLUSTER_SIZE = 16384;
/** Every "reads as zero" bit of an extended L2 bitmap (its high word). */
export const ALL_SUBCLUSTERS = 0xffffffff;

/**
 * How L2 entries of an image are read (`classify`'s `mode`): a bit set of `KIND_EXTL2` (the
 * zero flag is not used: subcluster bitmaps say it) and `KIND_DATA_FILE` (offset 0 with
 * COPIED is guest data at offset 0 of the external data file).
 */
export const KIND_EXTL2 = 1;
/** See {@link KIND_EXTL2}. */
export const KIND_DATA_FILE = 2;

/** Bits 9..55 of an entry hold a host offset: the mask of the high word's part. */
export const OFFSET_HI_MASK = 0x00ffffff;
/** The mask of the low word's part of a host offset. */
export const OFFSET_LO_MASK = 0xfffffe00;

const TWO32 = 0x100000000;

/** Reads a big-endian u64 at `pos` as a number (exact below 2^53). */
export function getU64(view: DataView, pos: number): number {
  return view.getUint32(pos) * TWO32 + view.getUint32(pos + 4);
}

/** Writes `value` (a safe integer) as a big-endian u64 at `pos`. */
export function setU64(view: DataView, pos: number, value: number): void {
  view.setUint32(pos, Math.floor(value / TWO32));
  view.setUint32(pos + 4, value >>> 0);
}

/** The host offset held in bits 9..55 of an L1, L2 or refcount table entry. */
export function entryOffset(hi: number, lo: number): number {
  return (hi & OFFSET_HI_MASK) * TWO32 + ((lo & OFFSET_LO_MASK) >>> 0);
}

/** The L2 entry (high and low words) of a COPIED data cluster at host `offset`. */
export function copiedEntry(offset: number): [number, number] {
  return [(Math.floor(offset / TWO32) | COPIED_HI) >>> 0, offset % TWO32];
}

/** The subcluster bits from index `from` up to (not including) `to`, as a u32 mask. */
export function subMask(from: number, to: number): number {
  if (to <= from) return 0;
  const hi = to >= 32 ? 0xffffffff : ((1 << to) - 1) >>> 0;
  const lo = from >= 32 ? 0xffffffff : ((1 << from) - 1) >>> 0;
  return (hi & ~lo) >>> 0;
}

/** A DataView over all of `buf`. */
export function viewOf(buf: Uint8Array): DataView {
  return new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
}

/** `0x`-prefixed hex, as QEMU prints offsets. */
export function hex(n: number): string {
  return `0x${n.toString(16)}`;
}
