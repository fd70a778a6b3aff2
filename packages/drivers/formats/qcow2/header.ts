/**
 * The qcow2 header: parsing with QEMU's checks and messages, header extensions (backing
 * format, feature name table, and every other extension kept byte for byte), the backing
 * file name, and serialisation back into the first cluster in QEMU's layout.
 *
 * @module
 */

import { BlockError } from "@blockgraph/core";
import {
  Ext,
  getU64,
  Incompat,
  INCOMPAT_KNOWN,
  MAX_BACKING_NAME,
  MAX_CLUSTER_BITS,
  MAX_L1_BYTES,
  MAX_REFTABLE_BYTES,
  MAX_SNAPSHOTS,
  MIN_CLUSTER_BITS,
  QCOW2_MAGIC,
  setU64,
  SUBCLUSTERS,
  V2_HEADER_LENGTH,
  viewOf,
} from "./format.ts";

/** One header extension as stored: its type and its data (without padding). */
export interface HeaderExtension {
  /** The extension type (`Ext`). */
  type: number;
  /** The data, exactly `len` bytes. */
  data: Uint8Array;
}

/** One entry of the feature name table. */
export interface FeatureName {
  /** 0 incompatible, 1 compatible, 2 autoclear. */
  type: number;
  /** The bit number. */
  bit: number;
  /** The feature's name. */
  name: string;
}

/** A parsed qcow2 header. Feature masks are bigints: bit 63 is a valid (unknown) bit. */
export interface Qcow2Header {
  /** 2 or 3. */
  version: number;
  /** Where the backing file name is stored (0: none). */
  backingFileOffset: number;
  /** Length of the backing file name. */
  backingFileSize: number;
  /** log2 of the cluster size. */
  clusterBits: number;
  /** Virtual disk size in bytes. */
  size: number;
  /** 0 none, 1 AES, 2 LUKS. */
  cryptMethod: number;
  /** Entries in the active L1 table. */
  l1Size: number;
  /** Offset of the active L1 table. */
  l1TableOffset: number;
  /** Offset of the refcount table. */
  refcountTableOffset: number;
  /** Clusters the refcount table occupies. */
  refcountTableClusters: number;
  /** Number of internal snapshots. */
  nbSnapshots: number;
  /** Offset of the snapshot table. */
  snapshotsOffset: number;
  /** Incompatible feature bits. */
  incompatible: bigint;
  /** Compatible feature bits. */
  compatible: bigint;
  /** Autoclear feature bits. */
  autoclear: bigint;
  /** log2 of the refcount width in bits (4 for version 2). */
  refcountOrder: number;
  /** Length of the header structure (72 for version 2). */
  headerLength: number;
  /** 0 zlib (deflate), 1 zstd. */
  compressionType: number;
  /** Header bytes from offset 105 to `headerLength`, kept as they are (padding, unknown fields). */
  tail: Uint8Array;
  /** Every header extension in file order, except the end marker. */
  extensions: HeaderExtension[];
  /** The backing file name, or undefined. */
  backingFile: string | undefined;
}

const decoder = new TextDecoder();
const encoder = new TextEncoder();

function invalid(message: string): BlockError {
  return new BlockError("EINVAL", message);
}

/** Checks a table's place and size as QEMU's `qcow2_validate_table` does. */
export function validateTable(
  offset: number,
  entries: number,
  entryLen: number,
  maxBytes: number,
  clusterSize: number,
  name: string,
): void {
  if (entries > Math.floor(maxBytes / entryLen)) {
    throw new BlockError("EFBIG", `${name} too large`);
  }
  if (offset % clusterSize !== 0 || offset + entries * entryLen > Number.MAX_SAFE_INTEGER) {
    throw invalid(`${name} offset invalid`);
  }
}

/** Reads the feature name table extension. */
export function parseFeatureTable(data: Uint8Array): FeatureName[] {
  const out: FeatureName[] = [];
  for (let p = 0; p + 48 <= data.length; p += 48) {
    const raw = data.subarray(p + 2, p + 48);
    const nul = raw.indexOf(0);
    const name = decoder.decode(nul < 0 ? raw : raw.subarray(0, nul));
    if (name === "") break;
    out.push({ type: data[p]!, bit: data[p + 1]!, name });
  }
  return out;
}

/** QEMU's "Unsupported qcow2 feature(s): ..." text for unknown incompatible `mask`. */
function unsupportedFeatures(table: FeatureName[], mask: bigint): string {
  const names: string[] = [];
  for (const f of table) {
    const bit = 1n << BigInt(f.bit);
    if (f.type === 0 && (mask & bit) !== 0n) {
      names.push(f.name);
      mask &= ~bit;
    }
  }
  if (mask !== 0n) names.push(`Unknown incompatible feature: ${mask.toString(16)}`);
  return `Unsupported qcow2 feature(s): ${names.join(", ")}`;
}

/** Reads the extension area between the header and `end`. */
function parseExtensions(cluster: Uint8Array, start: number, end: number): HeaderExtension[] {
  const view = viewOf(cluster);
  const out: HeaderExtension[] = [];
  let pos = start;
  while (pos < end) {
    if (pos + 8 > end) {
      throw invalid(`qcow2_read_extension: ERROR: pos=${pos}: header extension overruns ${end}`);
    }
    const type = view.getUint32(pos);
    const len = view.getUint32(pos + 4);
    pos += 8;
    if (type === Ext.END) break;
    if (len > end - pos) {
      throw invalid(
        `qcow2_read_extension: ERROR: ext_magic=0x${type.toString(16)}: len=${len} too large`,
      );
    }
    out.push({ type, data: cluster.slice(pos, pos + len) });
    pos += (len + 7) & ~7;
  }
  return out;
}

/**
 * Parses the first cluster of an image (`cluster` holds at least the header; bytes past the
 * end of a short file read as zeros). Throws QEMU's messages for invalid or unsupported
 * fields; checks that need the file (tables inside it) are the caller's.
 */
export function parseHeader(cluster: Uint8Array): Qcow2Header {
  if (cluster.length < V2_HEADER_LENGTH) throw invalid("Image is not in qcow2 format");
  const view = viewOf(cluster);
  if (view.getUint32(0) !== QCOW2_MAGIC) throw invalid("Image is not in qcow2 format");
  const version = view.getUint32(4);
  if (version < 2 || version > 3) {
    throw new BlockError("ENOTSUP", `Unsupported qcow2 version ${version}`);
  }
  const clusterBits = view.getUint32(20);
  if (clusterBits < MIN_CLUSTER_BITS || clusterBits > MAX_CLUSTER_BITS) {
    throw invalid(`Unsupported cluster size: 2^${clusterBits}`);
  }
  const cs = 2 ** clusterBits;
  const h: Qcow2Header = {
    version,
    backingFileOffset: getU64(view, 8),
    backingFileSize: view.getUint32(16),
    clusterBits,
    size: getU64(view, 24),
    cryptMethod: view.getUint32(32),
    l1Size: view.getUint32(36),
    l1TableOffset: getU64(view, 40),
    refcountTableOffset: getU64(view, 48),
    refcountTableClusters: view.getUint32(56),
    nbSnapshots: view.getUint32(60),
    snapshotsOffset: getU64(view, 64),
    incompatible: 0n,
    compatible: 0n,
    autoclear: 0n,
    refcountOrder: 4,
    headerLength: V2_HEADER_LENGTH,
    compressionType: 0,
    tail: new Uint8Array(0),
    extensions: [],
    backingFile: undefined,
  };
  if (version === 3) {
    h.incompatible = view.getBigUint64(72);
    h.compatible = view.getBigUint64(80);
    h.autoclear = view.getBigUint64(88);
    h.refcountOrder = view.getUint32(96);
    h.headerLength = view.getUint32(100);
    if (h.headerLength < 104) throw invalid("qcow2 header too short");
  }
  if (h.headerLength > cs) throw invalid("qcow2 header exceeds cluster size");
  if (version === 3 && h.headerLength % 8 !== 0) {
    throw invalid(`qcow2 header length ${h.headerLength} is not a multiple of 8`);
  }
  if (h.headerLength > 104) {
    h.compressionType = cluster[104]!;
    h.tail = cluster.slice(105, h.headerLength);
  }
  if (h.backingFileOffset > cs) throw invalid("Invalid backing file offset");
  const extEnd = h.backingFileOffset !== 0 ? h.backingFileOffset : cs;
  if (h.compressionType > 1) {
    throw new BlockError(
      "ENOTSUP",
      `qcow2: unknown compression type: ${h.compressionType}`,
    );
  }
  if (h.compressionType === 0 && (h.incompatible & BigInt(Incompat.COMPRESSION)) !== 0n) {
    throw invalid("qcow2: Compression type incompatible feature bit must not be set");
  }
  if (h.compressionType !== 0 && (h.incompatible & BigInt(Incompat.COMPRESSION)) === 0n) {
    throw invalid("qcow2: Compression type incompatible feature bit must be set");
  }
  const unknown = h.incompatible & ~BigInt(INCOMPAT_KNOWN);
  if (unknown !== 0n) {
    let table: FeatureName[] = [];
    try {
      const exts = parseExtensions(cluster, h.headerLength, extEnd);
      const ft = exts.find((e) => e.type === Ext.FEATURE_TABLE);
      if (ft) table = parseFeatureTable(ft.data);
    } catch {
      // The message names the bits either way.
    }
    throw new BlockError("ENOTSUP", unsupportedFeatures(table, unknown));
  }
  if (h.refcountOrder > 6) {
    throw invalid("Reference count entry width too large; may not exceed 64 bits");
  }
  if (h.refcountTableClusters === 0) {
    throw invalid("Image does not contain a reference count table");
  }
  validateTable(
    h.refcountTableOffset,
    h.refcountTableClusters,
    cs,
    MAX_REFTABLE_BYTES,
    cs,
    "Reference count table",
  );
  validateTable(h.snapshotsOffset, h.nbSnapshots, 40, 40 * MAX_SNAPSHOTS, cs, "Snapshot table");
  validateTable(h.l1TableOffset, h.l1Size, 8, MAX_L1_BYTES, cs, "Active L1 table");
  const extL2 = (h.incompatible & BigInt(Incompat.EXTL2)) !== 0n;
  if (extL2 && cs / SUBCLUSTERS < 2 ** MIN_CLUSTER_BITS) {
    throw invalid(`Unsupported subcluster size: ${cs / SUBCLUSTERS}`);
  }
  const l2Entries = cs / (extL2 ? 16 : 8);
  const needL1 = Math.ceil(Math.ceil(h.size / cs) / l2Entries);
  if (h.size > Number.MAX_SAFE_INTEGER || needL1 > 0x7fffffff) {
    throw new BlockError("EFBIG", "Image is too big");
  }
  if (h.l1Size < needL1) throw invalid("L1 table is too small");
  h.extensions = parseExtensions(cluster, h.headerLength, extEnd);
  const bf = h.extensions.find((e) => e.type === Ext.BACKING_FORMAT);
  if (bf && bf.data.length >= 16) {
    throw invalid(`ERROR: ext_backing_format: len=${bf.data.length} too large (>=16)`);
  }
  if (h.backingFileOffset !== 0) {
    const len = h.backingFileSize;
    if (len > Math.min(MAX_BACKING_NAME, cs - h.backingFileOffset)) {
      throw invalid("Backing file name too long");
    }
    h.backingFile = decoder.decode(
      cluster.subarray(h.backingFileOffset, h.backingFileOffset + len),
    );
  }
  return h;
}

/** The backing format named by the header extension, or undefined. */
export function backingFormat(h: Qcow2Header): string | undefined {
  const e = h.extensions.find((x) => x.type === Ext.BACKING_FORMAT);
  return e ? decoder.decode(e.data) : undefined;
}

/** The external data file name the header extension holds, or undefined. */
export function dataFileName(h: Qcow2Header): string | undefined {
  const e = h.extensions.find((x) => x.type === Ext.DATA_FILE);
  return e ? decoder.decode(e.data) : undefined;
}

/** Sets (or with `undefined` removes) the external data file name extension. */
export function setDataFileName(h: Qcow2Header, name: string | undefined): void {
  const at = h.extensions.findIndex((e) => e.type === Ext.DATA_FILE);
  const ext = name === undefined ? [] : [{ type: Ext.DATA_FILE, data: encoder.encode(name) }];
  if (at < 0) {
    // QEMU writes it after the backing format and before the feature table.
    const bf = h.extensions.findIndex((e) => e.type === Ext.BACKING_FORMAT);
    h.extensions.splice(bf + 1, 0, ...ext);
  } else h.extensions.splice(at, 1, ...ext);
}

/** The feature name table QEMU writes into new images. */
export function qemuFeatureTable(): Uint8Array {
  const names: [number, number, string][] = [
    [0, 0, "dirty bit"],
    [0, 1, "corrupt bit"],
    [0, 2, "external data file"],
    [0, 3, "compression type"],
    [0, 4, "extended L2 entries"],
    [1, 0, "lazy refcounts"],
    [2, 0, "bitmaps"],
    [2, 1, "raw external data"],
  ];
  const out = new Uint8Array(names.length * 48);
  names.forEach(([type, bit, name], i) => {
    out[i * 48] = type;
    out[i * 48 + 1] = bit;
    out.set(encoder.encode(name), i * 48 + 2);
  });
  return out;
}

/** Sets (or with `undefined` removes) the backing format extension, keeping the others. */
export function setBackingFormat(h: Qcow2Header, format: string | undefined): void {
  const rest = h.extensions.filter((e) => e.type !== Ext.BACKING_FORMAT);
  h.extensions = format === undefined
    ? rest
    : [{ type: Ext.BACKING_FORMAT, data: encoder.encode(format) }, ...rest];
}

/** Cluster sizes up to this one get no feature name table (QEMU's rule, see below). */
const MAX_CLUSTER_WITHOUT_FEATURE_TABLE = 4096;

/**
 * The extensions as QEMU's qcow2_update_header lays them out whenever it writes a header:
 * backing format, data file name, crypto header pointer, its own feature name table, the
 * bitmaps extension, then every other extension in the order read. The feature name table
 * (392 bytes) is written only by v3 images with clusters over 4 KiB: with 512-byte clusters it
 * would leave almost no room for the bitmaps extension or a backing file name, so QEMU drops
 * it there (also from images that had one).
 */
export function qemuExtensionLayout(h: Qcow2Header): HeaderExtension[] {
  const known: number[] = [Ext.BACKING_FORMAT, Ext.DATA_FILE, Ext.CRYPTO_HEADER];
  const out: HeaderExtension[] = [];
  for (const type of known) out.push(...h.extensions.filter((e) => e.type === type));
  if (h.version >= 3 && 2 ** h.clusterBits > MAX_CLUSTER_WITHOUT_FEATURE_TABLE) {
    out.push({ type: Ext.FEATURE_TABLE, data: qemuFeatureTable() });
  }
  out.push(...h.extensions.filter((e) => e.type === Ext.BITMAPS));
  const placed = new Set<number>([...known, Ext.FEATURE_TABLE, Ext.BITMAPS]);
  out.push(...h.extensions.filter((e) => !placed.has(e.type)));
  return out;
}

/**
 * Serialises `h` into a buffer of one cluster: header fields, the preserved tail, the
 * extensions in QEMU's layout ({@link qemuExtensionLayout}, which `h.extensions` becomes),
 * the end marker, then the backing file name (whose offset and size fields are set here).
 * Throws ENOSPC (QEMU's errno) when it does not fit in the cluster, leaving `h` as it was.
 */
export function serializeHeader(h: Qcow2Header): Uint8Array {
  const cs = 2 ** h.clusterBits;
  const extensions = qemuExtensionLayout(h);
  const buf = new Uint8Array(cs);
  const view = viewOf(buf);
  view.setUint32(0, QCOW2_MAGIC);
  view.setUint32(4, h.version);
  view.setUint32(20, h.clusterBits);
  setU64(view, 24, h.size);
  view.setUint32(32, h.cryptMethod);
  view.setUint32(36, h.l1Size);
  setU64(view, 40, h.l1TableOffset);
  setU64(view, 48, h.refcountTableOffset);
  view.setUint32(56, h.refcountTableClusters);
  view.setUint32(60, h.nbSnapshots);
  setU64(view, 64, h.snapshotsOffset);
  if (h.version >= 3) {
    view.setBigUint64(72, h.incompatible);
    view.setBigUint64(80, h.compatible);
    view.setBigUint64(88, h.autoclear);
    view.setUint32(96, h.refcountOrder);
    view.setUint32(100, h.headerLength);
    if (h.headerLength > 104) {
      buf[104] = h.compressionType;
      buf.set(h.tail.subarray(0, h.headerLength - 105), 105);
    }
  }
  let pos = h.headerLength;
  const room = (n: number) => {
    if (pos + n > cs) {
      throw new BlockError(
        "ENOSPC",
        "Header extensions and backing file name do not fit in a cluster",
      );
    }
  };
  for (const e of extensions) {
    room(8 + ((e.data.length + 7) & ~7));
    view.setUint32(pos, e.type);
    view.setUint32(pos + 4, e.data.length);
    buf.set(e.data, pos + 8);
    pos += 8 + ((e.data.length + 7) & ~7);
  }
  room(8);
  pos += 8;
  if (h.backingFile !== undefined) {
    const name = encoder.encode(h.backingFile);
    if (name.length > MAX_BACKING_NAME) throw invalid("Backing file name too long");
    room(name.length);
    buf.set(name, pos);
    setU64(view, 8, pos);
    view.setUint32(16, name.length);
    h.backingFileOffset = pos;
    h.backingFileSize = name.length;
  } else {
    // No backing file: both fields are zero (a removed one must not leave its offset).
    setU64(view, 8, 0);
    view.setUint32(16, 0);
    h.backingFileOffset = 0;
    h.backingFileSize = 0;
  }
  h.extensions = extensions;
  return buf;
}
