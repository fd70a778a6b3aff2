/**
 * Resizing a qcow2 image (QEMU's `qcow2_co_truncate`): growing moves the L1 table when it
 * must hold more entries and can preallocate the new area (metadata, falloc, full);
 * shrinking frees every cluster past the new end and the L2 tables wholly past it, then cuts
 * the file after the last cluster still in use.
 *
 * Ordering: a grown L1 table is written and flushed before the header points to it; the new
 * size is written last on growth, and after the cut-off clusters are unmapped on shrink.
 *
 * @module
 */

import { allocDataLocked } from "./data_alloc.ts";
import { BlockError, type PreallocMode, strerror } from "@blockgraph/core";
import { zeroClusterStep } from "./cluster_ops.ts";
import { zeroSubclusterStep } from "./subcluster_ops.ts";
import { copiedEntry, MAX_L1_BYTES, setU64, viewOf, ZERO_LO } from "./format.ts";
import { checkEncryptedPrealloc } from "./encryption.ts";
import { classify } from "./extent.ts";
import type { Qcow2Image } from "./image.ts";
import { serializeL1 } from "./tree.ts";

/**
 * Moves the active L1 table to new clusters holding `size` entries (QEMU's
 * `qcow2_grow_l1_table` with an exact size). Call with `lock` held.
 */
export async function growL1(image: Qcow2Image, size: number): Promise<void> {
  const cs = image.cs;
  const h = image.header;
  if (size * 8 > MAX_L1_BYTES) throw new BlockError("EFBIG", "Image is too big");
  const old = { offset: h.l1TableOffset, entries: image.l1.length };
  const clusters = Math.ceil((size * 8) / cs);
  const offset = await image.refcounts.alloc(clusters);
  await image.refcounts.writeback();
  await image.flush();
  while (image.l1.length < size) {
    image.l1.push(0);
    image.l1Copied.push(false);
  }
  const table = new Uint8Array(clusters * cs);
  table.set(serializeL1({ offsets: image.l1, copied: image.l1Copied }));
  await image.write("active L1 table", offset, table);
  await image.flush();
  const buf = new Uint8Array(12);
  viewOf(buf).setUint32(0, size);
  setU64(viewOf(buf), 4, offset);
  image.map.setRange("active L1 table", offset, size * 8);
  await image.writeHeaderField(36, buf);
  h.l1Size = size;
  h.l1TableOffset = offset;
  if (old.entries > 0) {
    await image.refcounts.update(old.offset / cs, Math.ceil((old.entries * 8) / cs), -1);
    await image.refcounts.writeback();
  }
}

/**
 * Gives every guest cluster in `[from, to)` an L2 table and a data cluster (metadata
 * preallocation), leaving allocated ones as they are. Call with `lock` held.
 */
export async function preallocateRange(image: Qcow2Image, from: number, to: number): Promise<void> {
  const cs = image.cs;
  // An encrypted cluster never written holds no encryption of zeros: it is allocated with the
  // zero flag (extended L2 entries leave its subclusters unallocated, which read as zeros or
  // the backing file's data).
  const zeroFlag = image.header.cryptMethod !== 0 && !image.extL2;
  for (let g = from; g < to;) {
    const n = Math.min(to - g, image.l2Entries - (g % image.l2Entries));
    await image.l2ForWrite(Math.floor(g / image.l2Entries));
    let k = 0;
    while (k < n) {
      const [hi, lo] = await image.entryAt(g + k);
      if (classify(hi, lo, image.kindMode) !== "unallocated") {
        k++;
        continue;
      }
      let run = 1;
      while (k + run < n) {
        const [h2, l2] = await image.entryAt(g + k + run);
        if (classify(h2, l2, image.kindMode) !== "unallocated") break;
        run++;
      }
      const host = await allocDataLocked(image, g + k, run);
      for (let j = 0; j < run; j++) {
        const [hi, lo] = copiedEntry(host + j * cs);
        await image.setEntry(g + k + j, hi, zeroFlag ? (lo | ZERO_LO) >>> 0 : lo);
      }
      k += run;
    }
    g += n;
  }
  await image.flushCaches();
}

/**
 * An upper bound of the clusters that preallocating guest clusters `[from, to)` adds to the
 * image file: their data clusters, an L2 table per L1 entry they span, the refcount blocks
 * covering all of it, and the refcount table moved to the end (twice, at twice the size).
 */
function preallocBound(image: Qcow2Image, from: number, to: number): number {
  const rc = image.refcounts;
  const E = rc.entriesPerBlock;
  const data = to - from;
  const tables = Math.floor((to - 1) / image.l2Entries) - Math.floor(from / image.l2Entries) + 1;
  const entries = Math.max(
    2 * rc.table.length,
    Math.ceil((2 * (rc.endCluster + data + tables)) / E) + 4,
  );
  const tableClusters = 2 * Math.ceil((8 * entries) / image.cs) + 2;
  const grown = data + tables + tableClusters;
  return grown + Math.ceil((grown + 2 * E) / (E - 1));
}

/**
 * Preallocates guest clusters `[from, to)` with `mode` (metadata, falloc or full): an L2 table
 * and a data cluster for each ({@link preallocateRange}), and with falloc or full the file
 * space under them, reserved or written with zeros. That space is given to the file first,
 * counted generously, and what is left over is cut off at the end: the tables are written as
 * they are allocated, and one written past the file's end would leave the file a hole below
 * it that growing the file afterwards never fills (a 1 GiB image's second L2 table, half way,
 * left half the data clusters unallocated in the file). With an external data file the data
 * file holds the preallocation; the image file gets only the tables.
 */
export async function preallocate(
  image: Qcow2Image,
  from: number,
  to: number,
  mode: PreallocMode,
): Promise<void> {
  const cs = image.cs;
  checkEncryptedPrealloc(image.header.cryptMethod !== 0, image.header.version, mode);
  const fileMode = mode === "metadata" || image.external ? "off" : mode;
  if (fileMode !== "off") {
    const reserve = (image.refcounts.endCluster + preallocBound(image, from, to)) * cs;
    if (reserve > image.file.getLength()) await image.file.truncate(reserve, false, fileMode);
  }
  await preallocateRange(image, from, to);
  const end = image.refcounts.endCluster * cs;
  if (image.file.getLength() < end) await image.file.truncate(end, false, fileMode);
  else if (fileMode !== "off") await trimFile(image);
}

async function writeSize(image: Qcow2Image, size: number): Promise<void> {
  const buf = new Uint8Array(8);
  setU64(viewOf(buf), 0, size);
  await image.writeHeaderField(24, buf);
  image.header.size = size;
}

/** Cuts the image file after the last cluster whose refcount is not zero. */
async function trimFile(image: Qcow2Image): Promise<void> {
  const rc = image.refcounts;
  let last = rc.endCluster - 1;
  while (last > 0 && (await rc.get(last)) === 0) last--;
  const end = (last + 1) * image.cs;
  if (end < image.file.getLength()) {
    await image.file.truncate(end, false, "off").catch(() => {});
    rc.endCluster = Math.min(rc.endCluster, last + 1);
  }
}

/**
 * Zeroes guest bytes `[from, to)` of one cluster in place when it is a COPIED data cluster:
 * what a shrink left past the old end must not come back on growth.
 */
async function zeroTail(image: Qcow2Image, from: number, to: number): Promise<void> {
  const ext = await image.lookup(from, to - from);
  if (ext.kind !== "normal" || !ext.copied) return;
  if (image.external) await image.data.write(ext.host, new Uint8Array(to - from));
  else await image.write("data", ext.host, new Uint8Array(to - from));
}

/**
 * Makes the whole (sub)clusters of the grown area `[from, size)` read as zeros (`from` is
 * (sub)cluster aligned), as QEMU's truncate with BDRV_REQ_ZERO_WRITE: preallocated clusters
 * keep their host cluster. Version 2 has no zero clusters: ENOTSUP. Call with `lock` held,
 * before the new size is written.
 */
async function zeroGrown(image: Qcow2Image, from: number, size: number): Promise<void> {
  if (from >= size) return;
  const cs = image.cs;
  try {
    if (image.dataRaw) await image.data.pwriteZeroes(from, size - from, 0);
    const step = image.extL2
      ? zeroSubclusterStep(image, from, size, size, 0)
      : zeroClusterStep(image, 0);
    try {
      for (let g = Math.floor(from / cs); g < Math.ceil(size / cs); g++) {
        const [hi, lo, zb, ab] = await image.entryAt(g);
        await step(g, hi, lo, zb, ab);
      }
    } finally {
      await image.frees.commit();
    }
  } catch (e) {
    const code = BlockError.from(e).code;
    throw new BlockError(code, `Failed to zero out new clusters: ${strerror(code)}`);
  }
}

/**
 * Resizes the image to `size` bytes. Call with `lock` held. `zeroNew`: the grown area must
 * read as zeros, not as the backing file below it (whole (sub)clusters from the first
 * boundary after the old size: the caller has written the zeros before that).
 */
export async function truncateImage(
  image: Qcow2Image,
  size: number,
  prealloc: PreallocMode,
  zeroNew = false,
): Promise<void> {
  const cs = image.cs;
  const old = image.header.size;
  if (!image.writable) throw new BlockError("EACCES", "Image is read-only");
  if (size === old) return;
  if (size < old) {
    if (prealloc !== "off") {
      throw new BlockError("ENOTSUP", "Preallocation can only be used for growing images");
    }
    await shrink(image, size);
    // The data file follows the disk's size (QEMU truncates it too).
    if (image.external) await image.data.truncate(size, false, "off");
    return;
  }
  const l1Needed = Math.ceil(Math.ceil(size / cs) / image.l2Entries);
  if (l1Needed > image.l1.length) await growL1(image, l1Needed);
  if (old % cs !== 0) await zeroTail(image, old, Math.min(size, Math.ceil(old / cs) * cs));
  if (image.external) {
    // Preallocation goes to the data file; a raw one is mapped 1:1 (metadata preallocation).
    if (image.data.getLength() < size) {
      await image.data.truncate(size, false, prealloc === "metadata" ? "off" : prealloc);
    }
    if (image.dataRaw || prealloc !== "off") {
      await preallocateRange(image, Math.ceil(old / cs), Math.ceil(size / cs));
    }
  } else if (prealloc !== "off") {
    await preallocate(image, Math.ceil(old / cs), Math.ceil(size / cs), prealloc);
  }
  if (zeroNew) await zeroGrown(image, Math.ceil(old / image.sc) * image.sc, size);
  await writeSize(image, size);
}

/** Frees everything past `size` and writes the new size. Call with `lock` held. */
async function shrink(image: Qcow2Image, size: number): Promise<void> {
  const cs = image.cs;
  const first = Math.ceil(size / cs);
  const last = Math.ceil(image.header.size / cs);
  const keepL1 = Math.ceil(first / image.l2Entries);
  for (let g = first; g < Math.min(last, keepL1 * image.l2Entries); g++) {
    const [hi, lo, zb] = await image.entryAt(g);
    if (classify(hi, lo, image.kindMode) === "unallocated" && zb === 0) continue;
    await image.setEntry(g, 0, 0);
    image.frees.release(hi, lo, "always");
  }
  await image.frees.commit();
  for (let i = keepL1; i < image.l1.length; i++) {
    const off = image.l1[i]!;
    if (off === 0) continue;
    const l2 = await image.l2.get(off);
    const v = viewOf(l2);
    for (let j = 0; j < image.l2Entries; j++) {
      const hi = v.getUint32(j * image.l2Stride);
      const lo = v.getUint32(j * image.l2Stride + 4);
      if (classify(hi, lo, image.kindMode) !== "unallocated") image.frees.release(hi, lo, "always");
    }
    image.l1[i] = 0;
    image.l1Copied[i] = false;
    await image.writeL1Entry(i);
    image.map.setL2(off, false);
    image.l2.drop(off);
    image.frees.add(off, 1, "always");
  }
  await image.flush();
  await image.frees.commit();
  await image.flushCaches();
  await writeSize(image, size);
  await trimFile(image);
}
