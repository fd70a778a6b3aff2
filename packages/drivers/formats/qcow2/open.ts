/**
 * Opening a qcow2 image: the header and its checks, the tables it points to (inside the
 * file, clear of the header), the snapshot table, the runtime options (runtime_options.ts:
 * cache sizes, lazy refcounts, overlap checks, discards, cache cleaning), the repair of a dirty
 * image (lazy refcounts), and the backing file (`backing: null` opens none; a left-out
 * `backing` opens the one the header names).
 *
 * @module
 */

import {
  BlockError,
  ChildRole,
  fullBackingFilename,
  isJsonFilename,
  mergeJsonFilename,
  type Node,
  type OpenContext,
  type OptionValues,
  parseJsonFilename,
} from "@blockgraph/core";
import { checkEncryptOptions, openEncryption, readLuksHeader } from "./encryption.ts";
import { encryptionInfo } from "./encryption_info.ts";
import { loadBitmaps } from "./bitmaps.ts";
import { checkOnce } from "./check.ts";
import { AUTOCLEAR_DATA_FILE_RAW, getU64, hex, Incompat, viewOf } from "./format.ts";
import { backingFormat, dataFileName, parseHeader, type Qcow2Header } from "./header.ts";
import { Qcow2Image } from "./image.ts";
import { Qcow2Instance } from "./instance.ts";
import { readRuntimeOptions } from "./runtime_options.ts";
import { inactiveL2Clusters, mapSnapshots } from "./snapshot.ts";
import { readSnapshotTable } from "./snapshot_table.ts";

/** Bits 0..8 of a refcount table entry are reserved: offsets are multiples of this. */
const REFT_OFFSET_ALIGN = 512;

/** Reads the first cluster of `file` (zeros past its end). */
async function readFirstCluster(file: Node): Promise<Uint8Array> {
  const probe = new Uint8Array(512);
  await file.read(0, probe);
  const bits = viewOf(probe).getUint32(20);
  if (bits < 9 || bits > 21) return probe;
  const cluster = new Uint8Array(2 ** bits);
  await file.read(0, cluster);
  return cluster;
}

/** Checks that a table lies inside the file and clear of the header. */
function checkInside(
  name: string,
  offset: number,
  bytes: number,
  cs: number,
  fileLen: number,
): void {
  if (bytes === 0) return;
  if (offset < cs) {
    throw new BlockError("EINVAL", `${name} at offset ${hex(offset)} overlaps the qcow2 header`);
  }
  if (offset + bytes > fileLen) {
    throw new BlockError(
      "EINVAL",
      `${name} at offset ${hex(offset)} (${bytes} bytes) is beyond the end of the image file ` +
        `(${fileLen} bytes)`,
    );
  }
}

/**
 * Reads the refcount table: the refcount block offsets (bits 9..63 of each entry, exact up to
 * 2^53) and the indices of entries with reserved bits (0..8) set, which check reports.
 */
async function readRefTable(
  file: Node,
  h: Qcow2Header,
): Promise<{ table: number[]; reserved: Set<number> }> {
  const cs = 2 ** h.clusterBits;
  const buf = new Uint8Array(h.refcountTableClusters * cs);
  await file.read(h.refcountTableOffset, buf);
  const view = viewOf(buf);
  const n = buf.length / 8;
  // Most entries of a table sized for growth are zero: they are skipped a word pair at a time
  // (this loop runs cold, once per open; decoding every entry took `img info` about 2 ms).
  const words = new Uint32Array(buf.buffer, buf.byteOffset, n * 2);
  const table: number[] = new Array<number>(n).fill(0);
  const reserved = new Set<number>();
  for (let i = 0; i < n; i++) {
    if ((words[2 * i]! | words[2 * i + 1]!) === 0) continue;
    const raw = getU64(view, i * 8);
    const low = view.getUint32(i * 8 + 4) % REFT_OFFSET_ALIGN;
    table[i] = raw - (raw % REFT_OFFSET_ALIGN);
    if (low !== 0) reserved.add(i);
  }
  return { table, reserved };
}

/** QEMU's repair of a dirty image on a read/write open (lazy refcounts, iotest 039). */
async function repairDirty(image: Qcow2Image): Promise<void> {
  const r = await image.lock.run(() => checkOnce(image, "all", []));
  for (const m of r.messages) console.error(m);
  if (r["check-errors"] > 0 || r.corruptions > 0) {
    throw new BlockError("EIO", "qcow2: Could not repair dirty image");
  }
}

/**
 * Resolves a backing file name relative to the image's own file name, as QEMU does for a
 * file name (`bdrv_get_full_backing_filename_from_filename`); an open node's is core's
 * `fullBackingFilename`.
 */
export function resolveBackingName(backing: string, imageFilename: string): string {
  if (backing.startsWith("/") || /^[a-zA-Z0-9.+-]+:/.test(backing)) return backing;
  const slash = imageFilename.lastIndexOf("/");
  if (slash < 0 || /^[a-zA-Z0-9.+-]+:\/\/[^/]*$/.test(imageFilename)) return backing;
  return imageFilename.slice(0, slash + 1) + backing;
}

/**
 * Opens the backing file the header names, with the format its extension names: a name taken
 * from the image's directory, or a `json:` name's options under that format and read-only.
 */
async function openHeaderBacking(ctx: OpenContext, h: Qcow2Header): Promise<void> {
  const name = h.backingFile!;
  const fmt = backingFormat(h);
  const filename = fullBackingFilename(ctx.node, name);
  const explicit: OptionValues = { "read-only": true };
  if (fmt !== undefined) explicit.driver = fmt;
  let options: OptionValues;
  try {
    options = isJsonFilename(filename)
      ? mergeJsonFilename(explicit, filename)
      : { ...explicit, file: { filename } };
  } catch (e) {
    const err = BlockError.from(e);
    throw new BlockError(err.code, `Could not open backing file: ${err.message}`, { cause: e });
  }
  // What QEMU's bdrv_backing_options passes down unless the name says otherwise: the cache
  // mode and force-share (the backing file is then shared with other users as its image is).
  const flags = ctx.node.flags;
  if (flags.forceShare && options["force-share"] === undefined) options["force-share"] = true;
  if ((flags.cacheDirect || flags.cacheNoFlush) && options.cache === undefined) {
    options.cache = { direct: flags.cacheDirect, "no-flush": flags.cacheNoFlush };
  }
  if (options.driver === undefined) {
    throw new BlockError(
      "EINVAL",
      `Backing file '${name}' has no backing format in the image header, and blockgraph ` +
        "never probes a backing file; recreate the image with a backing format " +
        "(-F), or give the 'backing' option",
    );
  }
  // An image that names itself, or one of the images that named it, would open forever.
  for (let n: Node | null = ctx.node; n; n = n.openingFor) {
    if (n.file?.node?.filename === filename) {
      throw new BlockError("ELOOP", `Backing file '${name}' creates an infinite loop`);
    }
  }
  const holder = `opening backing of '${ctx.node.name}'`;
  let node: Node;
  try {
    node = await ctx.openNamed(options, holder);
  } catch (e) {
    const err = BlockError.from(e);
    throw new BlockError(err.code, `Could not open backing file: ${err.message}`, { cause: e });
  }
  try {
    ctx.attachChild(node, "backing", ChildRole.COW);
    // Opened from the name the image gives: the backing file is the image's own.
    ctx.node.autoBackingFile = node.filename;
  } finally {
    await node.unref(holder);
  }
}

/**
 * Opens the external data file: the `data-file` option, or the file the header extension
 * names (relative to the image, as a backing file; a `json:` name by its options),
 * inheriting the node's flags.
 */
async function openDataFile(ctx: OpenContext, image: Qcow2Image, file: Node): Promise<void> {
  const h = image.header;
  const name = dataFileName(h);
  const fallback = name === undefined
    ? undefined
    : isJsonFilename(name)
    ? parseJsonFilename(name)
    : { filename: resolveBackingName(name, file.filename) };
  if (fallback === undefined && ctx.childOption("data-file") !== "given") {
    throw new BlockError(
      "EINVAL",
      "Could not open data file: 'data-file' is required for this image",
    );
  }
  const child = await ctx.openChild("data-file", ChildRole.DATA, true, fallback);
  const raw = (h.autoclear & BigInt(AUTOCLEAR_DATA_FILE_RAW)) !== 0n;
  image.setDataFile(child!.node!, raw);
}

/** Opens a qcow2 node over its `file` child. */
export async function openQcow2(ctx: OpenContext, options: OptionValues): Promise<Qcow2Instance> {
  const fileChild = (await ctx.openChild("file", ChildRole.IMAGE, true))!;
  const file = fileChild.node!;
  const h = parseHeader(await readFirstCluster(file));
  const writable = !ctx.readOnly;
  const cs = 2 ** h.clusterBits;
  checkEncryptOptions(h, options);
  const hasDataFile = (h.incompatible & BigInt(Incompat.DATA_FILE)) !== 0n;
  if ((h.autoclear & BigInt(AUTOCLEAR_DATA_FILE_RAW)) !== 0n && !hasDataFile) {
    throw new BlockError("EINVAL", "data-file-raw requires a data file");
  }
  if (!hasDataFile && ctx.childOption("data-file") !== "absent") {
    throw new BlockError(
      "EINVAL",
      "'data-file' can only be set for images with an external data file",
    );
  }
  const checkOpen = options["check-open"] === true;
  if (writable && !checkOpen && (h.incompatible & BigInt(Incompat.CORRUPT))) {
    throw new BlockError("EACCES", "qcow2: Image is corrupt; cannot be opened read/write");
  }
  const fileLen = file.getLength();
  checkInside("Active L1 table", h.l1TableOffset, h.l1Size * 8, cs, fileLen);
  checkInside(
    "Reference count table",
    h.refcountTableOffset,
    h.refcountTableClusters * cs,
    cs,
    fileLen,
  );
  const l1 = new Uint8Array(h.l1Size * 8);
  await file.read(h.l1TableOffset, l1);
  // Where QEMU reads them: after the L1 table, before the refcounts and the data file.
  const runtime = readRuntimeOptions(options, h, fileLen, ctx.node.flags.discard === "unmap");
  const refTable = await readRefTable(file, h);
  const snaps = await readSnapshotTable(
    file,
    h.snapshotsOffset,
    h.nbSnapshots,
    cs,
    h.version,
    h.size,
  );
  const node = ctx.node;
  const image = new Qcow2Image(
    file,
    h,
    l1,
    refTable.table,
    writable,
    runtime.l2CacheTables,
    { nodeName: node.name, emit: (name, data) => node.graph.events.emit(name, data) },
    runtime.refcountCacheBlocks,
  );
  // Everything but the cleaning timer, which starts once the open can no longer fail (below).
  image.applyOptions({ ...runtime, cacheCleanInterval: 0 });
  image.refcounts.reserved = refTable.reserved;
  if (hasDataFile) await openDataFile(ctx, image, file);
  if (h.cryptMethod !== 0) {
    const luks = await readLuksHeader(file, h);
    if (luks) image.map.setRange("crypto header", luks.offset, luks.length);
    image.encryption = encryptionInfo(luks?.header ?? null);
    // The metadata of an encrypted image opens without a key (`img info`); its data needs one.
    if (!ctx.node.flags.noIo) {
      const dataFile = hasDataFile;
      image.crypto = await openEncryption(node, { file, luks, options, writable, dataFile });
      // New clusters' untouched parts are written encrypted, never zeroed in the file.
      image.zeroCowAllowed = false;
    }
  }
  image.snapshots = snaps.entries;
  image.snapshotsBytes = snaps.bytes;
  mapSnapshots(image);
  image.map.setInactiveL2(await inactiveL2Clusters(image));
  if (writable && !checkOpen && (h.incompatible & BigInt(Incompat.DIRTY))) {
    await repairDirty(image);
  }
  node.autoBackingFile = h.backingFile ?? "";
  const given = ctx.childOption("backing");
  await ctx.openChild("backing", ChildRole.COW, false);
  if (given === "absent" && h.backingFile !== undefined) await openHeaderBacking(ctx, h);
  // Bitmaps (autoclear bit 0) are kept; the other autoclear bits are cleared on read/write.
  await loadBitmaps(image, node);
  const instance = new Qcow2Instance(node, image);
  // The rest of the options applied above; the timer only now.
  image.cleaner.setInterval(runtime.cacheCleanInterval);
  return instance;
}
