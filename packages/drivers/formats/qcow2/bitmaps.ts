/**
 * Persistent dirty bitmaps in a qcow2 image (the spec's "Bitmaps" extension, QEMU's
 * qcow2-bitmap.c semantics): loading the bitmap directory and tables into the node's
 * {@link DirtyBitmap}s at open, storing them back at close, and the checks for a new one.
 *
 * Autoclear bit 0 means "the bitmaps extension is consistent": a program that does not know
 * it clears it on a read/write open, so bitmaps found with the bit clear are dropped. A
 * read/write open marks every bitmap it loads `in_use` on disk (a crash then leaves them
 * inconsistent); a clean close writes the bitmaps and a directory without `in_use`.
 *
 * Store order (a crash leaves at most leaked clusters): data clusters, then tables, then the
 * new directory are written into newly allocated clusters; the refcount blocks are written
 * and the file flushed; then one header write points to the new directory (with the
 * autoclear bit); only after that flush are the old directory, tables and data freed.
 *
 * @module
 */

import { BitmapCheck, BlockError, DirtyBitmap, HBitmap, type Node } from "@blockgraph/core";
import {
  AUTOCLEAR_BITMAPS,
  AUTOCLEAR_DATA_FILE_RAW,
  entryOffset,
  Ext,
  getU64,
  setU64,
  viewOf,
} from "./format.ts";
import type { Qcow2Image } from "./image.ts";

/** Directory entry flag: the bitmap was in use (not stored cleanly). */
export const BME_IN_USE = 1;
/** Directory entry flag: the bitmap records writes (enabled). */
export const BME_AUTO = 2;
/** Directory entry flag: unknown extra data may be ignored. */
export const BME_EXTRA_DATA_COMPATIBLE = 4;
const BME_RESERVED = ~7 >>> 0;
/** Granularity bounds (bits). */
const MIN_GRANULARITY_BITS = 9;
const MAX_GRANULARITY_BITS = 31;
/** QEMU's BME_MAX_NAME_SIZE. */
const MAX_NAME_SIZE = 1023;
/** QEMU's BME_MAX_TABLE_SIZE (entries). */
const MAX_TABLE_SIZE = 0x8000000;
/** QEMU's BME_MAX_PHYS_SIZE (bytes of bitmap data). */
const MAX_PHYS_SIZE = 0x20000000;
/** QEMU's QCOW2_MAX_BITMAPS. */
const MAX_BITMAPS = 65535;
/** QEMU's QCOW2_MAX_BITMAP_DIRECTORY_SIZE. */
const MAX_DIRECTORY_SIZE = 1024 * MAX_BITMAPS;
/** Bitmap table entry: reserved bits 1..8. */
const BTE_RESERVED_LO = 0x1fe;

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

/** The bitmaps of one open image, as on disk. */
interface BitmapState {
  /** The directory as on disk (empty when the extension is absent). */
  entries: BitmapDirEntry[];
  /** Where the directory is, and its size (0: none). */
  dirOffset: number;
  dirSize: number;
  /** Names removed since the last store. */
  removed: Set<string>;
}

const states = new WeakMap<Qcow2Image, BitmapState>();

function stateOf(image: Qcow2Image): BitmapState {
  let s = states.get(image);
  if (!s) {
    s = { entries: [], dirOffset: 0, dirSize: 0, removed: new Set() };
    states.set(image, s);
  }
  return s;
}

/** Bytes a directory entry takes (padded to 8). */
function entrySize(nameBytes: number, extraBytes: number): number {
  return Math.ceil((24 + nameBytes + extraBytes) / 8) * 8;
}

function corrupt(msg: string): BlockError {
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
    if (pos + 24 > dir.length) throw corrupt("entry past the end of the directory");
    const nameSize = v.getUint16(pos + 18);
    const extraSize = v.getUint32(pos + 20);
    const size = entrySize(nameSize, extraSize);
    if (pos + size > dir.length) throw corrupt("entry past the end of the directory");
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
      throw corrupt(`invalid entry for bitmap '${e.name}'`);
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

/** The bitmaps extension data: count, directory size and offset. */
function extensionData(count: number, dirSize: number, dirOffset: number): Uint8Array {
  const d = new Uint8Array(24);
  const v = viewOf(d);
  v.setUint32(0, count);
  setU64(v, 8, dirSize);
  setU64(v, 16, dirOffset);
  return d;
}

/** Table entries (host offsets; 0 zeros, 1 all ones) of `e`. */
async function readTable(image: Qcow2Image, e: BitmapDirEntry): Promise<number[]> {
  const buf = new Uint8Array(e.tableSize * 8);
  await image.read(e.tableOffset, buf);
  const v = viewOf(buf);
  const out: number[] = [];
  for (let k = 0; k < e.tableSize; k++) {
    const hi = v.getUint32(k * 8);
    const lo = v.getUint32(k * 8 + 4);
    if ((lo & BTE_RESERVED_LO) !== 0 || (hi >>> 24) !== 0) {
      throw corrupt(`reserved bits set in the table of bitmap '${e.name}'`);
    }
    const off = entryOffset(hi, lo);
    out.push(off === 0 ? lo & 1 : off);
  }
  return out;
}

/** Bytes of guest data one bitmap data cluster covers. */
function clusterSpan(image: Qcow2Image, granularity: number): number {
  return image.cs * 8 * granularity;
}

/** Table entries a bitmap of `size` bytes at `granularity` needs. */
function tableSizeFor(image: Qcow2Image, size: number, granularity: number): number {
  return Math.ceil(Math.ceil(size / granularity) / 8 / image.cs);
}

/** Reads the bits of `e` into `hb`. */
async function loadData(image: Qcow2Image, e: BitmapDirEntry, hb: HBitmap): Promise<void> {
  const table = await readTable(image, e);
  const span = clusterSpan(image, hb.granularity);
  if (e.tableSize !== tableSizeFor(image, hb.size, hb.granularity)) {
    throw corrupt(`bitmap '${e.name}' has a table of the wrong size`);
  }
  const buf = new Uint8Array(image.cs);
  for (let k = 0; k < table.length; k++) {
    const off = k * span;
    const bytes = Math.min(span, hb.size - off);
    if (bytes <= 0) break;
    const t = table[k]!;
    if (t === 0) continue;
    if (t === 1) {
      hb.set(off, bytes);
      continue;
    }
    await image.read(t, buf);
    hb.deserialize(buf, off, bytes);
  }
}

/** The data-file-raw autoclear bit, kept on images with an external data file. */
function rawBit(image: Qcow2Image): bigint {
  return image.dataRaw ? BigInt(AUTOCLEAR_DATA_FILE_RAW) : 0n;
}

/**
 * Loads the image's bitmaps into `node` at open (QEMU's qcow2_load_dirty_bitmaps), keeping
 * the autoclear bit as QEMU does: a read/write open clears the other autoclear bits, drops
 * bitmaps a program without bitmap support left behind, and marks loaded bitmaps in_use.
 */
export async function loadBitmaps(image: Qcow2Image, node: Node): Promise<void> {
  const h = image.header;
  const st = stateOf(image);
  const ext = h.extensions.find((e) => e.type === Ext.BITMAPS);
  const bitSet = (h.autoclear & BigInt(AUTOCLEAR_BITMAPS)) !== 0n;
  let changed = false;
  if (ext && (!bitSet || h.version < 3)) {
    console.error(
      "qcow2: WARNING: a program lacking bitmap support modified this file, so all " +
        "bitmaps are now considered inconsistent",
    );
    h.extensions = h.extensions.filter((e) => e !== ext);
    changed = true;
  } else if (ext) {
    if (ext.data.length !== 24) {
      throw new BlockError("EINVAL", "bitmaps_ext: Invalid extension length");
    }
    const v = viewOf(ext.data);
    const count = v.getUint32(0);
    const dirSize = getU64(v, 8);
    const dirOffset = getU64(v, 16);
    if (count > MAX_BITMAPS) {
      throw new BlockError("EINVAL", "bitmaps_ext: Image has too many bitmaps");
    }
    if (count === 0) throw new BlockError("EINVAL", "found bitmaps extension with zero bitmaps");
    if (dirSize > MAX_DIRECTORY_SIZE) {
      throw new BlockError("EINVAL", "bitmaps_ext: bitmap directory size is too big");
    }
    if (dirOffset % image.cs !== 0 || dirOffset === 0) {
      throw new BlockError("EINVAL", "bitmaps_ext: invalid bitmap directory offset");
    }
    const dir = new Uint8Array(dirSize);
    await image.read(dirOffset, dir);
    st.entries = parseDirectory(dir, count, image.cs, image.file.getLength());
    st.dirOffset = dirOffset;
    st.dirSize = dirSize;
    for (const e of st.entries) {
      const inUse = (e.flags & BME_IN_USE) !== 0;
      const hb = new HBitmap(h.size, 2 ** e.granularityBits);
      if (!inUse) await loadData(image, e, hb);
      const bm = new DirtyBitmap(node, e.name, hb);
      bm.persistent = true;
      bm.inconsistent = inUse;
      bm.disabled = (e.flags & BME_AUTO) === 0;
      bm.readonly = !image.writable;
      node.dirtyBitmaps.push(bm);
    }
  }
  if (!image.writable || h.version < 3) return;
  const keep = (st.entries.length > 0 ? BigInt(AUTOCLEAR_BITMAPS) : 0n) | rawBit(image);
  if ((h.autoclear & ~keep) !== 0n) changed = true;
  const marks = st.entries.some((e) => (e.flags & BME_IN_USE) === 0);
  if (marks) {
    st.entries = st.entries.map((e) => ({ ...e, flags: e.flags | BME_IN_USE }));
  }
  if (!changed && !marks) return;
  h.autoclear &= keep;
  if (marks) {
    await writeDirectory(image, st, st.entries, []);
  } else {
    await image.writeHeader();
    await image.flush();
  }
}

/**
 * Writes `entries` as the new directory, points the header to it (with the autoclear bit
 * when there are entries), then frees the old directory and the `free` cluster ranges.
 */
async function writeDirectory(
  image: Qcow2Image,
  st: BitmapState,
  entries: BitmapDirEntry[],
  free: { offset: number; count: number }[],
): Promise<void> {
  const h = image.header;
  const cs = image.cs;
  const dir = serializeDirectory(entries);
  let dirOffset = 0;
  if (dir.length > 0) {
    dirOffset = await image.refcounts.alloc(Math.ceil(dir.length / cs));
    await image.refcounts.writeback();
    await image.write("data", dirOffset, dir);
  }
  await image.flush();
  const rest = h.extensions.filter((e) => e.type !== Ext.BITMAPS);
  if (entries.length > 0) {
    rest.push({ type: Ext.BITMAPS, data: extensionData(entries.length, dir.length, dirOffset) });
    h.autoclear |= BigInt(AUTOCLEAR_BITMAPS);
  } else {
    h.autoclear &= ~BigInt(AUTOCLEAR_BITMAPS);
  }
  h.extensions = rest;
  await image.writeHeader();
  await image.flush();
  if (st.dirSize > 0) free.push({ offset: st.dirOffset, count: Math.ceil(st.dirSize / cs) });
  st.entries = entries;
  st.dirOffset = dirOffset;
  st.dirSize = dir.length;
  for (const f of free) await image.refcounts.update(f.offset / cs, f.count, -1);
  await image.refcounts.writeback();
}

/** The clusters (table and data) an on-disk bitmap holds. */
async function clustersOf(
  image: Qcow2Image,
  e: BitmapDirEntry,
): Promise<{ offset: number; count: number }[]> {
  const out = [{ offset: e.tableOffset, count: Math.ceil((e.tableSize * 8) / image.cs) }];
  for (const t of await readTable(image, e)) if (t > 1) out.push({ offset: t, count: 1 });
  return out;
}

/** Writes `bm`'s data and table into new clusters; returns its directory entry. */
async function writeBitmap(image: Qcow2Image, bm: DirtyBitmap): Promise<BitmapDirEntry> {
  const hb = bm.hbitmap;
  const cs = image.cs;
  const span = clusterSpan(image, hb.granularity);
  const tableSize = Math.max(1, tableSizeFor(image, hb.size, hb.granularity));
  const table = new Uint8Array(Math.ceil((tableSize * 8) / cs) * cs);
  const tv = viewOf(table);
  for (let k = 0; k < tableSize; k++) {
    const off = k * span;
    const bytes = Math.min(span, hb.size - off);
    if (bytes <= 0) break;
    const data = hb.serialize(off, bytes);
    if (!data.some((b) => b !== 0)) continue;
    const buf = new Uint8Array(cs);
    buf.set(data);
    const at = await image.refcounts.alloc(1);
    await image.write("data", at, buf);
    setU64(tv, k * 8, at);
  }
  const tableOffset = await image.refcounts.alloc(table.length / cs);
  await image.write("data", tableOffset, table);
  return {
    tableOffset,
    tableSize,
    flags: bm.disabled ? 0 : BME_AUTO,
    type: 1,
    granularityBits: Math.log2(hb.granularity),
    name: bm.name!,
    extra: new Uint8Array(0),
  };
}

/**
 * Stores `node`'s persistent bitmaps in the image (QEMU's
 * qcow2_store_persistent_dirty_bitmaps), dropping removed ones. Call with `lock` held, on a
 * writable image.
 */
export async function storeBitmaps(image: Qcow2Image, node: Node): Promise<void> {
  const h = image.header;
  if (!image.writable || image.broken || h.version < 3) return;
  const st = stateOf(image);
  const mem = new Map<string, DirtyBitmap>();
  for (const b of node.dirtyBitmaps) if (b.persistent && b.name !== null) mem.set(b.name, b);
  if (mem.size === 0 && st.entries.length === 0) return;
  const free: { offset: number; count: number }[] = [];
  const entries: BitmapDirEntry[] = [];
  for (const e of st.entries) {
    const b = mem.get(e.name);
    // An inconsistent bitmap stays as it is on disk (in_use); a read-only one (loaded before
    // a reopen read/write) recorded the writes since, so it is written like the others.
    if (b && !st.removed.has(e.name) && b.inconsistent) {
      entries.push(e);
      mem.delete(e.name);
      continue;
    }
    free.push(...await clustersOf(image, e));
  }
  for (const b of mem.values()) {
    if (b.inconsistent) continue;
    entries.push(await writeBitmap(image, b));
  }
  st.removed.clear();
  await writeDirectory(image, st, entries, free);
}

/** Throws QEMU's error when a new persistent bitmap could not be stored. */
export function canStoreBitmap(
  image: Qcow2Image,
  node: Node,
  name: string,
  granularity: number,
): void {
  const fail = (msg: string): never => {
    throw new BlockError(
      "EINVAL",
      `Can't make bitmap '${name}' persistent in '${node.name}': ${msg}`,
    );
  };
  if (node.dirtyBitmaps.some((b) => b.name === name)) {
    throw new BlockError("EEXIST", `Bitmap already exists: ${name}`);
  }
  if (image.header.version < 3) {
    fail("Cannot store dirty bitmaps in qcow2 v2 files");
  }
  const bits = Math.log2(granularity);
  const len = image.header.size;
  if (bits > MAX_GRANULARITY_BITS) {
    fail(`Granularity exceeds maximum (${2 ** MAX_GRANULARITY_BITS} bytes)`);
  }
  if (bits < MIN_GRANULARITY_BITS) {
    fail(`Granularity is under minimum (${2 ** MIN_GRANULARITY_BITS} bytes)`);
  }
  if (len > MAX_PHYS_SIZE * 8 * granularity || len > MAX_TABLE_SIZE * image.cs * 8 * granularity) {
    fail("Too much space will be occupied by the bitmap. Use larger granularity");
  }
  if (encoder.encode(name).length > MAX_NAME_SIZE) {
    fail(`Name length exceeds maximum (${MAX_NAME_SIZE} characters)`);
  }
  let count = 1;
  let dirSize = entrySize(encoder.encode(name).length, 0);
  for (const b of node.dirtyBitmaps) {
    if (!b.persistent || b.name === null) continue;
    count++;
    dirSize += entrySize(encoder.encode(b.name).length, 0);
  }
  if (count > MAX_BITMAPS) fail("Maximum number of persistent bitmaps is already reached");
  if (dirSize > MAX_DIRECTORY_SIZE) fail("Not enough space in the bitmap directory");
}

/** A persistent bitmap was removed: the next store drops it and frees its clusters. */
export function bitmapRemoved(image: Qcow2Image, name: string): void {
  const st = stateOf(image);
  if (st.entries.some((e) => e.name === name)) st.removed.add(name);
}

/** `qemu-img info`'s format-specific "bitmaps" list, from the directory on disk. */
export function bitmapInfo(
  image: Qcow2Image,
): { flags: string[]; name: string; granularity: number }[] | undefined {
  const entries = states.get(image)?.entries ?? [];
  if (entries.length === 0) return undefined;
  return entries.map((e) => {
    const flags: string[] = [];
    if (e.flags & BME_IN_USE) flags.push("in-use");
    if (e.flags & BME_AUTO) flags.push("auto");
    return { flags, name: e.name, granularity: 2 ** e.granularityBits };
  });
}

/**
 * Before the first write after a reopen read/write (QEMU's qcow2_reopen_bitmaps_rw): the
 * other autoclear bits are cleared, the loaded bitmaps are marked in_use on disk and become
 * writable. Call with `lock` held.
 */
export async function reopenBitmapsRw(image: Qcow2Image, node: Node): Promise<void> {
  const h = image.header;
  const st = stateOf(image);
  for (const b of node.dirtyBitmaps) if (b.persistent) b.readonly = false;
  h.autoclear &= (st.entries.length > 0 ? BigInt(AUTOCLEAR_BITMAPS) : 0n) | rawBit(image);
  if (st.entries.some((e) => (e.flags & BME_IN_USE) === 0)) {
    const entries = st.entries.map((e) => ({ ...e, flags: e.flags | BME_IN_USE }));
    await writeDirectory(image, st, entries, []);
  } else {
    await image.writeHeader();
    await image.flush();
  }
}

/**
 * Before a reopen read-only (QEMU's qcow2_reopen_bitmaps_ro): stores the bitmaps (clearing
 * in_use); `commit` then makes the persistent ones read-only. Call with `lock` held.
 */
export async function reopenBitmapsRo(image: Qcow2Image, node: Node): Promise<() => void> {
  await storeBitmaps(image, node);
  return () => {
    for (const b of node.dirtyBitmaps) if (b.persistent) b.readonly = true;
  };
}

/** Stores at close; a failure is reported (as QEMU does) and the close goes on. */
export async function storeBitmapsAtClose(image: Qcow2Image, node: Node): Promise<void> {
  try {
    await storeBitmaps(image, node);
  } catch (e) {
    console.error(
      `Lost persistent bitmaps during inactivation of node '${node.name}': ${(e as Error).message}`,
    );
  }
}

/**
 * Refuses a resize when a bitmap stored in the image could not follow it (QEMU's
 * qcow2_truncate_bitmaps_check): one not loaded, or one busy, read-only or inconsistent.
 */
export function truncateBitmapsCheck(image: Qcow2Image, node: Node): void {
  const st = states.get(image);
  if (!st) return;
  for (const e of st.entries) {
    if (st.removed.has(e.name)) continue;
    const b = node.dirtyBitmaps.find((x) => x.name === e.name && x.persistent);
    if (!b) {
      throw new BlockError(
        "ENOTSUP",
        "Cannot resize qcow2 with persistent bitmaps that were not loaded",
      );
    }
    const err = b.check(BitmapCheck.DEFAULT);
    if (err) throw err;
  }
}
