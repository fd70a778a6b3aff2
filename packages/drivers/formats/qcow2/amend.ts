/**
 * `amend` (QEMU's `qcow2_amend_options`): compat upgrade and downgrade, lazy refcounts,
 * refcount width (the refcount structure is rewritten in the new width), size, the backing
 * file name and format, the external data file's name, and a LUKS image's key slots
 * (`encrypt.*`: `encryption.ts`); QEMU's errors for the rest (extended L2 entries and
 * data-file-raw are fixed at creation).
 *
 * @module
 */

import { BlockError, type OptionValues, parseSize } from "@blockgraph/core";
import {
  AUTOCLEAR_DATA_FILE_RAW,
  COMPAT_LAZY_REFCOUNTS,
  COPIED_HI,
  copiedEntry,
  entryOffset,
  hex,
  Incompat,
  V2_HEADER_LENGTH,
  V3_HEADER_LENGTH,
  viewOf,
} from "./format.ts";
import { backingFormat, serializeHeader, setBackingFormat, setDataFileName } from "./header.ts";
import { classify } from "./extent.ts";
import type { Qcow2Image } from "./image.ts";
import { Imrt, writeRefcountStructure } from "./rebuild.ts";
import { readL1 } from "./tree.ts";
import { amendEncryption } from "./encryption.ts";

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
  "encrypt.state",
  "encrypt.keyslot",
  "encrypt.new-secret",
  "encrypt.old-secret",
  "encrypt.iter-time",
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

/**
 * The progress of an amend (QEMU's `BlockDriverAmendStatusCB`): `done` of `total` units of
 * work, called as the work goes on.
 */
export type AmendProgress = (done: number, total: number) => void;

/**
 * QEMU's `qcow2_amend_helper_cb`: turns the progress of each step of an amend (upgrade,
 * refcount width, downgrade) into the progress of the whole, projecting the steps still to
 * come from the work of those done.
 */
class AmendSteps {
  readonly #report: AmendProgress | undefined;
  readonly #total: number;
  #current = "";
  #last = "";
  #completed = 0;
  #offsetCompleted = 0;
  #lastWork = 0;

  constructor(report: AmendProgress | undefined, total: number) {
    this.#report = report;
    this.#total = total;
  }

  /** Starts step `name`; its progress comes through {@link progress}. */
  step(name: string): AmendProgress {
    this.#current = name;
    return (done, work) => this.#progress(done, work);
  }

  #progress(done: number, work: number): void {
    if (this.#current !== this.#last) {
      if (this.#last !== "") {
        this.#offsetCompleted += this.#lastWork;
        this.#completed++;
      }
      this.#last = this.#current;
    }
    this.#lastWork = work;
    const current = this.#offsetCompleted + work;
    const projected = Math.floor(
      current * (this.#total - this.#completed - 1) / (this.#completed + 1),
    );
    this.#report?.(this.#offsetCompleted + done, current + projected);
  }
}

/** The L1 tables of the image: the active one, then each snapshot's (read from disk). */
async function l1Tables(image: Qcow2Image): Promise<number[][]> {
  const out: number[][] = [image.l1.slice()];
  for (const sn of image.snapshots) {
    out.push((await readL1(image, sn.l1TableOffset, sn.l1Size)).offsets);
  }
  return out;
}

/** Reads the L2 table at `l2Off`, after checking that it is where an L2 table can be. */
async function readL2(image: Qcow2Image, l2Off: number): Promise<Uint8Array> {
  if (l2Off % image.cs !== 0) {
    throw image.corrupt(`L2 table offset ${hex(l2Off)} unaligned`, l2Off, image.cs);
  }
  const table = new Uint8Array(image.cs);
  await image.read(l2Off, table);
  return table;
}

/** Whether any L2 table, the active image's or a snapshot's, holds a compressed cluster. */
async function hasCompressedClusters(image: Qcow2Image): Promise<boolean> {
  const seen = new Set<number>();
  for (const l1 of await l1Tables(image)) {
    for (const l2Off of l1) {
      if (l2Off === 0 || seen.has(l2Off)) continue;
      seen.add(l2Off);
      const view = viewOf(await readL2(image, l2Off));
      for (let j = 0; j < image.l2Entries; j++) {
        if (classify(view.getUint32(j * 8), view.getUint32(j * 8 + 4)) === "compressed") {
          return true;
        }
      }
    }
  }
  return false;
}

/**
 * Turns the zero clusters of every L2 table (the active image's, then each snapshot's) into
 * what version 2 can say (QEMU's `qcow2_expand_zero_clusters`): without a backing file a
 * plain zero cluster becomes unallocated; with one it gets a new cluster of zeros; a zero
 * cluster with an allocation gets zeros written into it. A table shared by several L1
 * tables (refcount over 1) is changed in place for all of them, a new cluster taking the
 * table's refcount. Unlike QEMU 7.2, a zero cluster whose host cluster is also referenced
 * from another table (a snapshot's data) is not zeroed in place, which would change the
 * snapshot: it is given up (its refcount dropped) and handled as a plain zero cluster.
 * Reports one unit of `progress` per L1 entry. Call with `lock` held and the caches empty.
 */
async function expandZeroClusters(
  image: Qcow2Image,
  backing: boolean,
  progress: AmendProgress,
): Promise<void> {
  const cs = image.cs;
  const tables = await l1Tables(image);
  const total = tables.reduce((n, l1) => n + l1.length, 0);
  const zeros = new Uint8Array(cs);
  let visited = 0;
  // A table several L1 tables name is expanded once: it is changed in place for all of them.
  const seen = new Set<number>();
  for (const l1 of tables) {
    for (const l2Off of l1) {
      if (l2Off !== 0 && !seen.has(l2Off)) {
        seen.add(l2Off);
        const table = await readL2(image, l2Off);
        const view = viewOf(table);
        const shared = await image.refcounts.get(l2Off / cs);
        // Host clusters given up, whose references go only once the table no longer names them.
        const dropped: number[] = [];
        let dirty = false;
        for (let j = 0; j < image.l2Entries; j++) {
          const hi = view.getUint32(j * 8);
          const lo = view.getUint32(j * 8 + 4);
          const kind = classify(hi, lo);
          if (kind !== "zero" && kind !== "zero-alloc") continue;
          let host = kind === "zero-alloc" ? entryOffset(hi, lo) : 0;
          if (host % cs !== 0) {
            throw image.corrupt(
              `Cluster allocation offset ${hex(host)} unaligned (L2 offset: ${
                hex(l2Off)
              }, L2 index: ${hex(j)})`,
            );
          }
          if (host !== 0 && await image.refcounts.get(host / cs) > shared) {
            dropped.push(host);
            host = 0;
          }
          dirty = true;
          if (host === 0 && !backing) {
            view.setUint32(j * 8, 0);
            view.setUint32(j * 8 + 4, 0);
            continue;
          }
          if (host === 0) {
            host = await image.refcounts.alloc(1);
            if (shared > 1) await image.refcounts.update(host / cs, 1, shared - 1);
          }
          await image.write("data", host, zeros);
          const [eh, el] = copiedEntry(host);
          view.setUint32(j * 8, shared === 1 ? eh : (eh & ~COPIED_HI) >>> 0);
          view.setUint32(j * 8 + 4, el);
        }
        if (dirty) {
          // New clusters are counted, and hold their zeros, before the table names them.
          await image.refcounts.writeback();
          await image.flush();
          await image.write("active L2 table", l2Off, table);
          await image.flush();
          for (const host of dropped) await image.refcounts.update(host / cs, 1, -shared);
        }
      }
      progress(++visited, total);
    }
  }
  await image.refcounts.writeback();
  await image.flush();
  image.l2.clear();
}

/**
 * QEMU's `qcow2_downgrade` to version 2: refused for what version 2 cannot hold (refcounts
 * other than 16 bits, a data file, snapshots of another size or with a VM state over 4 GiB,
 * incompatible features, zstd-compressed clusters), after making the image clean and
 * expanding its zero clusters. Call with `lock` held.
 */
async function downgrade(
  image: Qcow2Image,
  backing: boolean,
  progress: AmendProgress,
): Promise<void> {
  const h = image.header;
  if (h.refcountOrder !== 4) {
    throw new BlockError("ENOTSUP", "compat=0.10 requires refcount_bits=16");
  }
  if (image.external) throw new BlockError("ENOTSUP", "Cannot downgrade an image with a data file");
  for (const sn of image.snapshots) {
    if (sn.vmStateSize > 0xffffffff || sn.diskSize !== h.size) {
      throw new BlockError("ENOTSUP", "Internal snapshots prevent downgrade of image");
    }
  }
  // Making the image clean writes what lazy refcounts held back.
  await image.markClean();
  const features = h.incompatible & ~BigInt(Incompat.COMPRESSION);
  if (features !== 0n) {
    throw new BlockError(
      "ENOTSUP",
      `Cannot downgrade an image with incompatible features 0x${features.toString(16)} set`,
    );
  }
  // QEMU asks after expanding zero clusters, which cannot add compressed ones: asked first,
  // a refusal changes nothing. QEMU 7.2 looks at the active image only; a snapshot's
  // compressed clusters would be left unreadable, so they count too.
  if (h.compressionType !== 0 && await hasCompressedClusters(image)) {
    throw new BlockError(
      "ENOTSUP",
      "Cannot downgrade an image with zstd compression type and existing compressed clusters",
    );
  }
  // Lazy refcounts were made good by cleaning the image; compatible and autoclear
  // features can simply be dropped.
  const before = { compatible: h.compatible, autoclear: h.autoclear, lazy: image.useLazy };
  h.compatible = 0n;
  image.useLazy = false;
  image.lazy = false;
  h.autoclear = 0n;
  try {
    await image.quiesce();
    await expandZeroClusters(image, backing, progress);
  } catch (e) {
    // The image stays the version 3 image it was (its zero clusters, where expanded, hold
    // the same zeros): a later header write must not drop its features.
    h.compatible = before.compatible;
    h.autoclear = before.autoclear;
    image.useLazy = before.lazy;
    image.lazy = image.writable && before.lazy;
    throw e;
  }
  h.compressionType = 0;
  h.version = 2;
  h.headerLength = V2_HEADER_LENGTH;
  h.incompatible = 0n;
  // serializeHeader drops the feature name table of a v2 header.
  await image.writeHeader();
}

/**
 * QEMU's `qcow2_upgrade` to version 3: the header (with QEMU's feature name table) in two
 * reported steps.
 */
async function upgrade(image: Qcow2Image, progress: AmendProgress): Promise<void> {
  const h = image.header;
  progress(0, 2);
  progress(1, 2);
  h.version = 3;
  h.headerLength = V3_HEADER_LENGTH;
  h.tail = new Uint8Array(V3_HEADER_LENGTH - 105);
  // serializeHeader adds QEMU's feature name table (clusters over 4 KiB).
  await image.writeHeader();
  progress(2, 2);
}

/** What is left of an amend after {@link amendImage}: the size step, then the downgrade. */
export interface AmendRest {
  /** The new virtual size, or 0 to leave it: the caller resizes as a guest resize does. */
  readonly size: number;
  /** The downgrade, if one was asked for: call with `lock` held, after the resize. */
  readonly finish: (() => Promise<void>) | null;
}

/**
 * Applies `options` (qemu-img's names) to the image, step by step in QEMU's order (upgrade,
 * refcount width, data file name, lazy refcounts, size, downgrade), reporting the steps'
 * progress to `progress`. `backing` says whether the image has a backing file (zero
 * clusters of a downgraded image must then hold zeros). Call with `lock` held. It stops
 * before the size: a resize goes through the node's own truncate (its checks, and zeros over
 * a longer backing file, which need the lock free), then the caller runs `finish`.
 */
export async function amendImage(
  image: Qcow2Image,
  options: OptionValues,
  backing: boolean,
  progress?: AmendProgress,
  force = false,
): Promise<AmendRest> {
  if (!image.writable) throw new BlockError("EACCES", "Image is read-only");
  let keyslots = false;
  for (const k of Object.keys(options)) {
    if (options[k] === undefined) continue;
    if (!(QCOW2_AMEND_OPTIONS as readonly string[]).includes(k)) {
      einval(`Invalid parameter '${k}'\nThis option is only supported for image creation`);
    }
    keyslots ||= k.startsWith("encrypt.");
  }
  // Key slots first: a refusal there changes nothing else.
  if (keyslots) await amendEncryption(image, options, force);
  const h = image.header;
  const oldVersion = h.version;
  // The options in QEMU's order (its amend option list), each checked as it comes.
  let version = h.version;
  const compat = options.compat as string | undefined;
  if (compat !== undefined) {
    if (compat === "0.10" || compat === "v2") version = 2;
    else if (compat === "1.1" || compat === "v3") version = 3;
    else einval(`Unknown compatibility level ${compat}`);
  }
  if (options.data_file !== undefined && !image.external) {
    einval("data-file can only be set for images that use an external data file");
  }
  if (options.data_file_raw !== undefined && isOn(options.data_file_raw) && !image.dataRaw) {
    einval("data-file-raw cannot be set on existing images");
  }
  // What the header says: the lazy-refcounts open option may differ for this open only.
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
  const steps = new AmendSteps(
    progress,
    (version !== oldVersion ? 1 : 0) + (order !== h.refcountOrder ? 1 : 0),
  );
  await image.quiesce();
  // Upgrade first: what follows may need version 3.
  if (version > oldVersion) await upgrade(image, steps.step("upgrade"));
  if (order !== h.refcountOrder) {
    if (version < 3 && order !== 4) {
      einval(
        "Refcount widths other than 16 bits require compatibility level 1.1 or above (use " +
          "compat=1.1 or greater)",
      );
    }
    // QEMU reports the refcount walks of its rewrite; this rewrite is one step.
    const report = steps.step("refcount order");
    report(0, 1);
    await changeRefcountOrder(image, order);
    report(1, 1);
  }
  if (options.data_file_raw !== undefined && !isOn(options.data_file_raw) && image.dataRaw) {
    h.autoclear &= ~BigInt(AUTOCLEAR_DATA_FILE_RAW);
    image.dataRaw = false;
    await image.writeHeader();
  }
  if (options.data_file !== undefined) {
    // Only the name changes: the new file is opened by the next open.
    setDataFileName(h, options.data_file as string);
    await image.writeHeader();
  }
  // QEMU 7.2 no longer changes the backing file through amend (rebase does).
  const file = options.backing_file as string | undefined;
  const fmt = options.backing_fmt as string | undefined;
  if (
    (file !== undefined || fmt !== undefined) &&
    (file !== h.backingFile || fmt !== backingFormat(h))
  ) {
    einval("Cannot amend the backing file\nYou can use 'qemu-img rebase' instead.");
  }
  if (lazy !== lazyNow) {
    if (lazy && version < 3) {
      einval(
        "Lazy refcounts only supported with compatibility level 1.1 and above (use " +
          "compat=1.1 or greater)",
      );
    }
    if (!lazy) await image.markClean();
    if (lazy) h.compatible |= BigInt(COMPAT_LAZY_REFCOUNTS);
    else h.compatible &= ~BigInt(COMPAT_LAZY_REFCOUNTS);
    image.useLazy = lazy;
    image.lazy = image.writable && lazy;
    await image.writeHeader();
  }
  // qemu-img passes the size as typed ("2M"); 0 leaves the size alone, as QEMU.
  const size = typeof options.size === "string" ? parseSize(options.size) : options.size;
  if (size !== undefined && typeof size !== "number") einval("Parameter 'size' expects a size");
  // Downgrade last, once what version 2 cannot hold has been removed.
  const report = version < oldVersion ? steps.step("downgrade") : null;
  return {
    size: size ?? 0,
    finish: report && (() => downgrade(image, backing, report)),
  };
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
