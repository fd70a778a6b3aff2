/**
 * The qcow2 bitmap directory as bytes (the spec's "Bitmap directory" and the bitmaps header
 * extension): its entries, their flags and limits, parsing with QEMU's checks, and
 * serialising. What is stored where, and when, is bitmaps.ts's business.
 *
 * @module
 */

import { BlockError } from "@blockgraph/core";
import { getU64, setU64, viewOf } from "./format.ts";

/** Directory entry flag: the bitmap was in use (not stored cleanly). */
export const BME_IN_USE = 1;
/** Directory entry flag: the bitmap records writes (enabled). */
export const BME_AUTO = 2;
/** Directory entry flag: unknown extra data may be ignored. */
export const BME_EXTRA_DATA_COMPATIBLE = 4;
const BME_RESERVED = ~7 >>> 0;
/** Smallest granularity (bits). */
export const MIN_GRANULARITY_BITS = 9;
/** Largest granularity (bits). */
export const MAX_GRANULARITY_BITS = 31;
/** QEMU's BME_MAX_NAME_SIZE. */
export const MAX_NAME_SIZE = 1023;
/** QEMU's BME_MAX_TABLE_SIZE (entries). */
export const MAX_TABLE_SIZE = 0x8000000;
/** QEMU's BME_MAX_PHYS_SIZE (bytes of bitmap data). */
export const MAX_PHYS_SIZE = 0x20000000;
/** QEMU's QCOW2_MAX_BITMAPS. */
export const MAX_BITMAPS = 65535;
/** QEMU's QCOW2_MAX_BITMAP_DIRECTORY_SIZE. */
export const MAX_DIRECTORY_SIZE = 1024 * MAX_BITMAPS;

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** One bitmap directory entry. */
export interface BitmapDirEntry {
  /** Offset of the bitmap table. */
  tableOffset: number;
  /** Entries in the bitmap table. */
  tableSize: number;
  /** BME_* flags. */
  flags: number;
  /** 1: dirty tracking bitmap. */
  type: number;
  /** log2 of the bytes per bit. */
  granularityBits: number;
  /** The name. */
  name: string;
  /** Extra data, kept as is. */
  extra: Uint8Array;
}

/** Bytes a directory entry takes (padded to 8). */
export function entrySize(nameBytes: number, extraBytes: number): number {
  return Math.ceil((24 + nameBytes + extraBytes) / 8) * 8;
}

/** Bytes the directory entry of a bitmap called `name` takes. */
export function entrySizeOf(name: string): number {
  return entrySize(encoder.encode(name).length, 0);
}

/** The error for a directory that breaks the spec. */
export function corruptDirectory(msg: string): BlockError {
  return new BlockError("EINVAL", `Bitmap directory is corrupted: ${msg}`);
}

/** Parses and checks the bitmap directory `dir` of `count` entries. */
export function parseDirectory(
  dir: Uint8Array,
  count: number,
  cs: number,
  fileLen: number,
): BitmapDirEntry[] {
  const v = viewOf(dir);
  const out: BitmapDirEntry[] = [];
  let pos = 0;
  for (let i = 0; i < count; i++) {
    if (pos + 24 > dir.length) throw corruptDirectory("entry past the end of the directory");
    const nameSize = v.getUint16(pos + 18);
    const extraSize = v.getUint32(pos + 20);
    const size = entrySize(nameSize, extraSize);
    if (pos + size > dir.length) throw corruptDirectory("entry past the end of the directory");
    const e: BitmapDirEntry = {
      tableOffset: getU64(v, pos),
      tableSize: v.getUint32(pos + 8),
      flags: v.getUint32(pos + 12),
      type: v.getUint8(pos + 16),
      granularityBits: v.getUint8(pos + 17),
      extra: dir.slice(pos + 24, pos + 24 + extraSize),
      name: decoder.decode(dir.subarray(pos + 24 + extraSize, pos + 24 + extraSize + nameSize)),
    };
    if (
      e.type !== 1 || (e.flags & BME_RESERVED) !== 0 ||
      e.granularityBits < MIN_GRANULARITY_BITS || e.granularityBits > MAX_GRANULARITY_BITS ||
      e.tableSize === 0 || e.tableSize > MAX_TABLE_SIZE || e.tableOffset % cs !== 0 ||
      e.tableOffset + e.tableSize * 8 > fileLen || nameSize === 0 || nameSize > MAX_NAME_SIZE ||
      (extraSize !== 0 && (e.flags & BME_EXTRA_DATA_COMPATIBLE) === 0)
    ) {
      throw corruptDirectory(`invalid entry for bitmap '${e.name}'`);
    }
    out.push(e);
    pos += size;
  }
  return out;
}

/** Serialises directory entries. */
export function serializeDirectory(entries: BitmapDirEntry[]): Uint8Array {
  const names = entries.map((e) => encoder.encode(e.name));
  let total = 0;
  entries.forEach((e, i) => (total += entrySize(names[i]!.length, e.extra.length)));
  const buf = new Uint8Array(total);
  const v = viewOf(buf);
  let pos = 0;
  entries.forEach((e, i) => {
    const name = names[i]!;
    setU64(v, pos, e.tableOffset);
    v.setUint32(pos + 8, e.tableSize);
    v.setUint32(pos + 12, e.flags);
    v.setUint8(pos + 16, e.type);
    v.setUint8(pos + 17, e.granularityBits);
    v.setUint16(pos + 18, name.length);
    v.setUint32(pos + 20, e.extra.length);
    buf.set(e.extra, pos + 24);
    buf.set(name, pos + 24 + e.extra.length);
    pos += entrySize(name.length, e.extra.length);
  });
  return buf;
}

/** The bitmaps header extension's data: count, directory size and offset. */
export function extensionData(count: number, dirSize: number, dirOffset: number): Uint8Array {
  const d = new Uint8Array(24);
  const v = viewOf(d);
  v.setUint32(0, count);
  setU64(v, 8, dirSize);
  setU64(v, 16, dirOffset);
  return d;
}

/** The bitmaps header extension's fields. */
export function parseExtensionData(
  data: Uint8Array,
): { count: number; dirSize: number; dirOffset: number } {
  const v = viewOf(data);
  return { count: v.getUint32(0), dirSize: getU64(v, 8), dirOffset: getU64(v, 16) };
}
