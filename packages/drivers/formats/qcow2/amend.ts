/**
 * `amend` (QEMU's `qcow2_amend_options`): compat upgrade and downgrade, lazy refcounts,
 * refcount width (the refcount structure is rewritten in the new width), size, the backing
 * file name and format, and the external data file's name; QEMU's errors for the rest
 * (extended L2 entries and data-file-raw are fixed at creation).
 *
 * @module
 */

import { BlockError, type OptionValues } from "@blockgraph/core";
import { checkOnce } from "./check.ts";
import {
  COMPAT_LAZY_REFCOUNTS,
  copiedEntry,
  entryOffset,
  Incompat,
  V2_HEADER_LENGTH,
  V3_HEADER_LENGTH,
} from "./format.ts";
import { backingFormat, serializeHeader, setBackingFormat, setDataFileName } from "./header.ts";
import { classify } from "./extent.ts";
import type { Qcow2Image } from "./image.ts";
import { Imrt, writeRefcountStructure } from "./rebuild.ts";
import { truncateImage } from "./resize.ts";

/** The options `amend` changes, as qemu-img names them. */
export const QCOW2_AMEND_OPTIONS = [
  "compat",
  "lazy_refcounts",
  "refcount_bits",
  "size",
  "backing_file",
  "backing_fmt",
  "data_file",
  "data_file_raw",
] as const;

/** A boolean option, given as a boolean or as qemu-img's text (`on`, `off`). */
function isOn(value: unknown): boolean {
  return value === true || value === "on" || value === "true" || value === "yes";
}

function einval(message: string): never {
  throw new BlockError("EINVAL", message);
}

/** Rewrites the refcount structure with entries of `2^order` bits. Call with `lock` held. */
async function changeRefcountOrder(image: Qcow2Image, order: number): Promise<void> {
  const rc = image.refcounts;
  const max = order >= 6 ? Number.MAX_SAFE_INTEGER : 2 ** (2 ** order) - 1;
  const imrt = new Imrt(rc.endCluster);
  for (let c = 0; c < rc.endCluster; c++) {
    const v = await rc.get(c);
    if (v > max) {
      einval(
        `Cannot decrease refcount entry width to ${2 ** order} bits: Cluster at offset ` +
          `0x${(c * image.cs).toString(16)} has a refcount of ${v}`,
      );
    }
    if (v > 0) imrt.set(c, v);
  }
  const old = { place: rc.place, blocks: rc.table.filter((o) => o !== 0) };
  const layout = await writeRefcountStructure(image, imrt, order);
  // One header write names the new table and its width together (both in the first
  // sector), after the new structure is stable: a crash leaves the old or the new one.
  const h = image.header;
  const saved = [h.refcountOrder, h.refcountTableOffset, h.refcountTableClusters] as const;
  h.refcountOrder = order;
  h.refcountTableOffset = layout.place.offset;
  h.refcountTableClusters = layout.place.clusters;
  try {
    await image.writeHeaderField(48, serializeHeader(h).subarray(48, 100));
  } catch (e) {
    [h.refcountOrder, h.refcountTableOffset, h.refcountTableClusters] = saved;
    throw e;
  }
  const cs = image.cs;
  image.map.setRange("refcount table", layout.place.offset, layout.place.clusters * cs);
  image.map.clearRefblocks();
  image.refcounts = image.makeRefcounts(order, layout.table, layout.place, layout.end);
  await image.refcounts.update(old.place.offset / cs, old.place.clusters, -1);
  for (const b of old.blocks) await image.refcounts.update(b / cs, 1, -1);
  await image.refcounts.writeback();
  await image.flush();
}

/** Turns zero clusters into data or unallocated clusters for version 2. */
async function expandZeroClusters(image: Qcow2Image, backing: boolean): Promise<void> {
  const clusters = Math.ceil(image.header.size / image.cs);
  for (let g = 0; g < clusters; g++) {
    const [hi, lo] = await image.entryAt(g);
    const kind = classify(hi, lo, image.kindMode);
    if (kind === "zero") {
      if (!backing) {
        await image.setEntry(g, 0, 0);
        continue;
      }
      const off = await image.refcounts.alloc(1);
      await image.write("data", off, new Uint8Array(image.cs));
      await image.setEntry(g, ...copiedEntry(off));
    } else if (kind === "zero-alloc") {
      await image.write("data", entryOffset(hi, lo), new Uint8Array(image.cs));
      await image.setEntry(g, hi, (lo & ~1) >>> 0);
    }
  }
  await image.flushCaches();
  await image.flush();
}

/**
 * Applies `options` (qemu-img's names) to the image. `backing` says whether the image has a
 * backing file (zero clusters of a downgraded image must then hold zeros). Call with `lock`
 * held.
 */
export async function amendImage(
  image: Qcow2Image,
  options: OptionValues,
  backing: boolean,
): Promise<void> {
  if (!image.writable) throw new BlockError("EACCES", "Image is read-only");
  for (const k of Object.keys(options)) {
    if (options[k] === undefined) continue;
    if (!(QCOW2_AMEND_OPTIONS as readonly string[]).includes(k)) {
      einval(`Invalid parameter '${k}'\nThis option is only supported for image creation`);
    }
  }
  const h = image.header;
  // QEMU 7.2 no longer changes the backing file through amend (rebase does, below).
  const file = options.backing_file as string | undefined;
  const fmt = options.backing_fmt as string | undefined;
  if (
    (file !== undefined || fmt !== undefined) &&
    (file !== h.backingFile || fmt !== backingFormat(h))
  ) {
    einval("Cannot amend the backing file\nYou can use 'qemu-img rebase' instead.");
  }
  let version = h.version;
  const compat = options.compat as string | undefined;
  if (compat !== undefined) {
    if (compat === "0.10" || compat === "v2") version = 2;
    else if (compat === "1.1" || compat === "v3") version = 3;
    else einval(`Unknown compatibility level ${compat}`);
  }
  const lazyNow = (h.compatible & BigInt(COMPAT_LAZY_REFCOUNTS)) !== 0n;
  const lazy = options.lazy_refcounts === undefined ? lazyNow : isOn(options.lazy_refcounts);
  let order = h.refcountOrder;
  if (options.refcount_bits !== undefined) {
    const rb = Number(options.refcount_bits);
    if (!(rb >= 1 && rb <= 64 && (rb & (rb - 1)) === 0)) {
      einval("Refcount width must be a power of two and may not exceed 64 bits");
    }
    order = Math.log2(rb);
  }
  if (version < 3 && lazy) {
    einval(
      "Lazy refcounts only supported with compatibility level 1.1 and above (use compat=1.1 " +
        "or greater)",
    );
  }
  if (version < 3 && order !== 4) einval("compat=0.10 requires refcount_bits=16");
  if (options.data_file !== undefined && !image.external) {
    einval("data-file can only be set for images that use an external data file");
  }
  if (options.data_file_raw !== undefined && isOn(options.data_file_raw) !== image.dataRaw) {
    einval("data-file-raw cannot be set on existing images");
  }
  if (version < h.version) {
    if (image.external) einval("Cannot downgrade an image with a data file");
    const features = h.incompatible &
      ~BigInt(Incompat.DIRTY | Incompat.CORRUPT | Incompat.COMPRESSION);
    if (features !== 0n) {
      einval(`Cannot downgrade an image with incompatible features 0x${features.toString(16)} set`);
    }
    if (image.snapshots.length > 0) einval("Internal snapshots prevent downgrade of image");
    if (h.compressionType !== 0) {
      einval("Cannot downgrade an image with a compression type other than zlib");
    }
  }
  await image.quiesce();
  if (version > h.version) {
    h.version = 3;
    h.headerLength = V3_HEADER_LENGTH;
    h.tail = new Uint8Array(V3_HEADER_LENGTH - 105);
    // serializeHeader adds QEMU's feature name table (clusters over 4 KiB).
    await image.writeHeader();
  }
  if (order !== h.refcountOrder) await changeRefcountOrder(image, order);
  if (lazy !== lazyNow) {
    if (!lazy) await image.markClean();
    if (lazy) h.compatible |= BigInt(COMPAT_LAZY_REFCOUNTS);
    else h.compatible &= ~BigInt(COMPAT_LAZY_REFCOUNTS);
    image.useLazy = lazy;
    image.lazy = image.writable && lazy;
    await image.writeHeader();
  }
  if (options.data_file !== undefined) {
    // Only the name changes: the new file is opened by the next open.
    setDataFileName(h, options.data_file as string);
    await image.writeHeader();
  }
  if (options.size !== undefined) await truncateImage(image, Number(options.size), "off");
  if (version < h.version) {
    if ((h.incompatible & BigInt(Incompat.DIRTY)) !== 0n) await checkOnce(image, "all", []);
    await expandZeroClusters(image, backing);
    await image.quiesce();
    h.version = 2;
    h.headerLength = V2_HEADER_LENGTH;
    h.incompatible = 0n;
    h.compatible = 0n;
    h.autoclear = 0n;
    // serializeHeader drops the feature name table of a v2 header.
    await image.writeHeader();
  }
}

/**
 * Names `file` (with format `format`) as the image's backing file in its header, or removes
 * it (`file` empty: no name, no format, offset and size 0), as QEMU's
 * `qcow2_change_backing_file` does for `qemu-img rebase`; nothing is opened or copied.
 */
export async function changeBackingFile(
  image: Qcow2Image,
  file: string,
  format: string | undefined,
): Promise<void> {
  if (!image.writable) throw new BlockError("EACCES", "Image is read-only");
  const h = image.header;
  if (file === "" && format !== undefined) {
    einval("Backing format cannot be used without backing file");
  }
  h.backingFile = file === "" ? undefined : file;
  setBackingFormat(h, format);
  await image.writeHeader();
}
