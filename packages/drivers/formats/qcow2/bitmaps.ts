/**
 * Persistent dirty bitmaps in a qcow2 image (the spec's "Bitmaps" extension, QEMU's
 * qcow2-bitmap.c semantics): loading the bitmap directory and tables into the node's
 * {@link DirtyBitmap}s at open, storing them back at close, and the checks for a new one.
 * The directory's bytes are bitmap_directory.ts's.
 *
 * Autoclear bit 0 means "the bitmaps extension is consistent": a program that does not know
 * it clears it on a read/write open, so bitmaps found with the bit clear are dropped. A
 * read/write open marks every bitmap it loads `in_use` on disk, rewriting the directory in
 * place as QEMU does ({@link markInUse}; a crash then leaves them inconsistent); a clean
 * close writes the bitmaps and a directory without `in_use`.
 *
 * The directory keeps QEMU's order: the entries already on disk where they are, then the
 * new bitmaps newest first (QEMU's list of a node's bitmaps grows at its head; ours grows at
 * the tail, so it is walked backwards).
 *
 * Store order (a crash leaves at most leaked clusters): data clusters, then tables, then the
 * new directory are written into newly allocated clusters; the refcount blocks are written
 * and the file flushed; then one header write points to the new directory (with the
 * autoclear bit); only after that flush are the old directory, tables and data freed. A
 * store that fails before that header write frees every cluster it allocated.
 *
 * @module
 */

import {
  BitmapCheck,
  BlockError,
  DirtyBitmap,
  HBitmap,
  type Node,
  strerror,
} from "@blockgraph/core";
import {
  type BitmapDirEntry,
  BME_AUTO,
  BME_IN_USE,
  corruptDirectory,
  entrySizeOf,
  extensionData,
  MAX_BITMAPS,
  MAX_DIRECTORY_SIZE,
  MAX_GRANULARITY_BITS,
  MAX_NAME_SIZE,
  MAX_PHYS_SIZE,
  MAX_TABLE_SIZE,
  MIN_GRANULARITY_BITS,
  parseDirectory,
  parseExtensionData,
  serializeDirectory,
} from "./bitmap_directory.ts";
import {
  AUTOCLEAR_BITMAPS,
  AUTOCLEAR_DATA_FILE_RAW,
  entryOffset,
  Ext,
  setU64,
  viewOf,
} from "./format.ts";
import { serializeHeader } from "./header.ts";
import type { Qcow2Image } from "./image.ts";
import type { DiscardType } from "./runtime_options.ts";

/** Bitmap table entry: reserved bits 1..8. */
const BTE_RESERVED_LO = 0x1fe;

const encoder = new TextEncoder();

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

/** A run of clusters. */
interface Clusters {
  offset: number;
  count: number;
  /**
   * How they are discarded in the file once freed, as QEMU frees them: a bitmap's data
   * clusters always (QCOW2_DISCARD_ALWAYS), its table and an old directory as `other`
   * (pass-discard-other, off by default). Clusters a failed store allocated: not freed this way.
   */
  discard?: DiscardType;
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
      throw corruptDirectory(`reserved bits set in the table of bitmap '${e.name}'`);
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
    throw corruptDirectory(`bitmap '${e.name}' has a table of the wrong size`);
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
    const { count, dirSize, dirOffset } = parseExtensionData(ext.data);
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
    image.map.setRange("bitmap directory", dirOffset, dirSize);
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
  h.autoclear &= keep;
  if (st.entries.some((e) => (e.flags & BME_IN_USE) === 0)) {
    await markInUse(image, st);
  } else if (changed) {
    await image.writeHeader();
  }
}

/**
 * Marks every bitmap of the directory in use by rewriting the directory where it is, as
 * QEMU's update_ext_header_and_dir_in_place does (nothing is allocated or freed, so the image
 * does not grow). The autoclear bit guards the rewrite; each step is flushed before the next:
 * 1. the header without the bitmaps autoclear bit: from here a reader takes the bitmaps
 *    extension as inconsistent and ignores it (qemu-img check then counts the bitmaps'
 *    clusters as leaked, QEMU's next read/write open drops them);
 * 2. the directory, same size and place, with the in_use flags;
 * 3. the header with the bit again: the bitmaps are now in use.
 * A crash before 1 leaves the bitmaps as they were (consistent: nothing has been written
 * since), between 1 and 3 it loses them and leaks their clusters, after 3 they load
 * inconsistent. A torn directory write cannot be seen: the bit is clear while it happens.
 */
async function markInUse(image: Qcow2Image, st: BitmapState): Promise<void> {
  const h = image.header;
  const bit = BigInt(AUTOCLEAR_BITMAPS);
  const entries = st.entries.map((e) => ({ ...e, flags: e.flags | BME_IN_USE }));
  const dir = serializeDirectory(entries);
  if (dir.length !== st.dirSize) throw corruptDirectory("its size changed while marking it");
  h.autoclear &= ~bit;
  await image.writeHeader();
  await image.write("bitmap directory", st.dirOffset, dir);
  await image.flush();
  st.entries = entries;
  h.autoclear |= bit;
  await image.writeHeader();
}

/** Drops the references to `runs` (clusters this store allocated) and writes them back. */
async function release(image: Qcow2Image, runs: Clusters[]): Promise<void> {
  try {
    for (const r of runs) await image.refcounts.update(r.offset / image.cs, r.count, -1);
    await image.refcounts.writeback();
  } catch {
    // The store failed already; what could not be released stays leaked, never referenced.
  }
}

/**
 * Writes `entries` as the new directory, points the header to it (with the autoclear bit
 * when there are entries), then frees the old directory and the `free` cluster runs. When
 * it fails before the header write, it frees the new directory and the clusters in `fresh`
 * (what the store allocated for the tables and data the entries point to) and leaves the
 * header and the directory as they were (QEMU's message, with its errno). When the header
 * write itself fails, nothing is freed: the header on disk may point either way.
 */
async function writeDirectory(
  image: Qcow2Image,
  st: BitmapState,
  entries: BitmapDirEntry[],
  free: Clusters[],
  fresh: Clusters[],
): Promise<void> {
  const h = image.header;
  const cs = image.cs;
  const saved = { extensions: h.extensions, autoclear: h.autoclear };
  const dir = serializeDirectory(entries);
  let dirOffset = 0;
  let header: Uint8Array;
  try {
    if (dir.length > 0) {
      dirOffset = await image.refcounts.alloc(Math.ceil(dir.length / cs));
      fresh.push({ offset: dirOffset, count: Math.ceil(dir.length / cs) });
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
    header = serializeHeader(h);
  } catch (e) {
    h.extensions = saved.extensions;
    h.autoclear = saved.autoclear;
    await release(image, fresh);
    const err = BlockError.from(e);
    throw new BlockError(err.code, `Failed to update bitmap extension: ${strerror(err.code)}`);
  }
  if (st.dirSize > 0) {
    free.unshift({ offset: st.dirOffset, count: Math.ceil(st.dirSize / cs), discard: "other" });
  }
  st.entries = entries;
  st.dirOffset = dirOffset;
  st.dirSize = dir.length;
  await image.write("qcow2_header", 0, header);
  await image.flush();
  // The header names the new directory: from here it is the one writes must keep off (the
  // old one's clusters are freed below).
  image.map.setRange("bitmap directory", dirOffset, dir.length);
  for (const f of free) image.frees.add(f.offset, f.count, f.discard ?? "other");
  await image.frees.commit();
  await image.refcounts.writeback();
}

/** The clusters (table and data) an on-disk bitmap holds. */
async function clustersOf(image: Qcow2Image, e: BitmapDirEntry): Promise<Clusters[]> {
  const out: Clusters[] = [{
    offset: e.tableOffset,
    count: Math.ceil((e.tableSize * 8) / image.cs),
    discard: "other",
  }];
  for (const t of await readTable(image, e)) {
    if (t > 1) out.push({ offset: t, count: 1, discard: "always" });
  }
  return out;
}

/**
 * Writes `bm`'s data and table into new clusters, recording each in `fresh` as it is
 * allocated; returns its directory entry.
 */
async function writeBitmap(
  image: Qcow2Image,
  bm: DirtyBitmap,
  fresh: Clusters[],
): Promise<BitmapDirEntry> {
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
    fresh.push({ offset: at, count: 1 });
    await image.write("data", at, buf);
    setU64(tv, k * 8, at);
  }
  const tableOffset = await image.refcounts.alloc(table.length / cs);
  fresh.push({ offset: tableOffset, count: table.length / cs });
  // Its own size, as QEMU writes it: the rest of the cluster stays a hole in the file.
  await image.write("data", tableOffset, table.subarray(0, tableSize * 8));
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
 *
 * The new directory lists, as QEMU's does, the entries on disk in their order (a bitmap
 * loaded from one is written again in its place; an inconsistent one, or one not loaded,
 * stays as it is), then the new bitmaps newest first. They are written in that order.
 */
export async function storeBitmaps(image: Qcow2Image, node: Node): Promise<void> {
  const h = image.header;
  if (!image.writable || image.broken || h.version < 3) return;
  const st = stateOf(image);
  // Newest first, as QEMU walks its list of a node's bitmaps.
  const mem = node.dirtyBitmaps.filter((b) => b.persistent && b.name !== null).reverse();
  if (mem.length === 0 && st.entries.length === 0) return;
  await dropRemoved(image, st);
  const byName = new Map(mem.map((b) => [b.name!, b]));
  const free: Clusters[] = [];
  const slots: (BitmapDirEntry | DirtyBitmap)[] = [];
  for (const e of st.entries) {
    const b = byName.get(e.name);
    if (!b || b.inconsistent) {
      slots.push(e);
      continue;
    }
    // A read-only one (loaded before a reopen read/write) recorded the writes since, so it
    // is written like the others.
    free.push(...await clustersOf(image, e));
    slots.push(b);
    byName.delete(e.name);
  }
  for (const b of byName.values()) if (!b.inconsistent) slots.push(b);
  const fresh: Clusters[] = [];
  const entries: BitmapDirEntry[] = [];
  try {
    for (const s of slots) {
      entries.push(s instanceof DirtyBitmap ? await writeBitmap(image, s, fresh) : s);
    }
  } catch (e) {
    await release(image, fresh);
    throw e;
  }
  await writeDirectory(image, st, entries, free, fresh);
}

/**
 * Drops the bitmaps removed since the last store from the directory, one by one in the order
 * they were removed, as QEMU's qcow2_co_remove_persistent_dirty_bitmap did at each removal: a
 * new directory without it, then its clusters freed. A removal does it at once; a store does
 * it for the removals that could not (a transaction's commit does not wait for it, or the
 * write failed), so the image is laid out as QEMU's would be.
 */
async function dropRemoved(image: Qcow2Image, st: BitmapState): Promise<void> {
  for (const name of [...st.removed]) {
    const e = st.entries.find((x) => x.name === name);
    if (e) {
      const rest = st.entries.filter((x) => x !== e);
      await writeDirectory(image, st, rest, await clustersOf(image, e), []);
    }
    st.removed.delete(name);
  }
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
  let dirSize = entrySizeOf(name);
  for (const b of node.dirtyBitmaps) {
    if (!b.persistent || b.name === null) continue;
    count++;
    dirSize += entrySizeOf(b.name);
  }
  if (count > MAX_BITMAPS) fail("Maximum number of persistent bitmaps is already reached");
  if (dirSize > MAX_DIRECTORY_SIZE) fail("Not enough space in the bitmap directory");
}

/**
 * A persistent bitmap of `node` is being removed: a new directory without it is written and
 * its clusters are freed now, as QEMU's qcow2_co_remove_persistent_dirty_bitmap does. Should
 * that fail while the bitmap is still `node`'s (a plain removal, which then fails), it stays
 * stored; once it is gone from `node` (a transaction's commit does not wait), the name stays
 * marked and the next store drops it.
 */
export async function bitmapRemoved(image: Qcow2Image, node: Node, name: string): Promise<void> {
  const st = stateOf(image);
  if (!st.entries.some((e) => e.name === name)) return;
  st.removed.add(name);
  try {
    await image.lock.run(() => dropRemoved(image, st));
  } catch (e) {
    if (node.dirtyBitmaps.some((b) => b.persistent && b.name === name)) st.removed.delete(name);
    throw e;
  }
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
    await markInUse(image, st);
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
