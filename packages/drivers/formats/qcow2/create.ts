/**
 * Creating qcow2 images (`qemu-img create -f qcow2`): option checks with QEMU's messages,
 * the initial layout (header, refcount table, refcount blocks, L1 table), and metadata
 * preallocation through the driver's own allocation path.
 *
 * @module
 */

import {
  BlockError,
  type CreateContext,
  type DriverRegistry,
  Graph,
  isJsonFilename,
  mergeJsonFilename,
  type Node,
  type OptionSchema,
  type OptionValues,
  type PreallocMode,
  validateOptions,
} from "@blockgraph/core";
import {
  AUTOCLEAR_DATA_FILE_RAW,
  COMPAT_LAZY_REFCOUNTS,
  MIN_EXTL2_CREATE_CLUSTER_SIZE,
  setU64,
  V2_HEADER_LENGTH,
  V3_HEADER_LENGTH,
  viewOf,
} from "./format.ts";
import { Ext, Incompat, QCOW2_MAGIC } from "./format.ts";
import { type Qcow2Header, serializeHeader, setBackingFormat, setDataFileName } from "./header.ts";
import type { Qcow2Image } from "./image.ts";
import type { Qcow2Instance } from "./instance.ts";
import { resolveBackingName } from "./open.ts";
import {
  ENCRYPT_CREATE_OPTIONS,
  encryptionRequest,
  newImageEncryption,
} from "./create_encryption.ts";
import { preallocate } from "./resize.ts";

/** The options `create` takes, as qemu-img names them. */
export const QCOW2_CREATE_OPTIONS: OptionSchema = {
  ...ENCRYPT_CREATE_OPTIONS,
  filename: { type: "string", description: "File name of the image", required: true },
  size: { type: "size", description: "Virtual disk size" },
  compat: { type: "string", description: "Compatibility level (v2 [0.10] or v3 [1.1])" },
  backing_file: { type: "string", description: "File name of a base image" },
  backing_fmt: { type: "string", description: "Image format of the base image" },
  cluster_size: { type: "size", description: "qcow2 cluster size", default: 65536 },
  preallocation: {
    type: "enum",
    description: "Preallocation mode (allowed values: off, metadata, falloc, full)",
    values: ["off", "metadata", "falloc", "full"],
  },
  lazy_refcounts: {
    type: "bool",
    description: "Postpone refcount updates",
    default: false,
  },
  refcount_bits: {
    type: "int",
    description: "Width of a reference count entry in bits",
    default: 16,
  },
  compression_type: {
    type: "enum",
    description: "Compression method used for image cluster compression",
    values: ["zlib", "zstd"],
  },
  extended_l2: {
    type: "bool",
    description: "Extended L2 tables",
    default: false,
  },
  data_file: {
    type: "string",
    description: "File name of an external data file",
  },
  data_file_raw: {
    type: "bool",
    description: "The external data file must stay valid as a raw image",
  },
};

/** What a new image looks like. */
export interface Qcow2CreateParams {
  /** Virtual size in bytes. */
  size: number;
  /** 2 or 3. */
  version: number;
  /** Cluster size in bytes (a power of two, 512 to 2 MiB). */
  clusterSize: number;
  /** Refcount width in bits (1 to 64, a power of two). */
  refcountBits: number;
  /** Sets the lazy refcounts compatible bit. */
  lazyRefcounts: boolean;
  /** 0 zlib (default), 1 zstd (sets the compression type incompatible bit). */
  compressionType?: number;
  /** Backing file name to record. */
  backingFile?: string;
  /** Backing format to record. */
  backingFormat?: string;
  /** Extended L2 entries (32 subclusters per cluster; version 3, clusters of 16 KiB or more). */
  extendedL2?: boolean;
  /** The external data file name to record (version 3). */
  dataFile?: string;
  /** Sets the data-file-raw autoclear bit (needs `dataFile`). */
  dataFileRaw?: boolean;
}

/** The header's crypt method of LUKS. */
const CRYPT_LUKS = 2;

function fail(message: string): never {
  throw new BlockError("EINVAL", message);
}

/** Checks create options and turns them into parameters (size may come from the backing file). */
export function createParams(options: OptionValues, backingSize?: number): Qcow2CreateParams {
  const compat = options.compat as string | undefined;
  let version = 3;
  if (compat === "0.10" || compat === "v2") version = 2;
  else if (compat !== undefined && compat !== "1.1" && compat !== "v3") {
    fail(`Invalid parameter '${compat}'`);
  }
  // The checks come in the order of QEMU's qcow2_co_create, so that the first one failing
  // is the one QEMU reports.
  const cs = options.cluster_size as number;
  const extendedL2 = options.extended_l2 === true;
  if (extendedL2 && version < 3) {
    fail(
      "Extended L2 entries are only supported with compatibility level 1.1 and above (use " +
        "version=v3 or greater)",
    );
  }
  if (cs < 512 || cs > 2 * 1024 * 1024 || (cs & (cs - 1)) !== 0) {
    fail("Cluster size must be a power of two between 512 and 2048k");
  }
  if (extendedL2 && cs < MIN_EXTL2_CREATE_CLUSTER_SIZE) {
    fail(
      "Extended L2 entries are only supported with cluster sizes of at least " +
        `${MIN_EXTL2_CREATE_CLUSTER_SIZE} bytes`,
    );
  }
  const backingFile = options.backing_file as string | undefined;
  const backingFormat = options.backing_fmt as string | undefined;
  const prealloc = options.preallocation as string | undefined ?? "off";
  if (backingFile !== undefined && prealloc !== "off" && !extendedL2) {
    fail(
      "Backing file and preallocation can only be used at the same time if extended_l2 is on",
    );
  }
  if (backingFormat !== undefined && backingFile === undefined) {
    fail("Backing format cannot be used without backing file");
  }
  if (backingFile !== undefined && backingFormat === undefined) {
    fail("Backing file specified without backing format");
  }
  const lazy = options.lazy_refcounts === true;
  if (version === 2 && lazy) {
    fail(
      "Lazy refcounts only supported with compatibility level 1.1 and above (use version=v3 " +
        "or greater)",
    );
  }
  const rb = options.refcount_bits as number;
  if (rb < 1 || rb > 64 || (rb & (rb - 1)) !== 0) {
    fail("Refcount width must be a power of two and may not exceed 64 bits");
  }
  if (version === 2 && rb !== 16) {
    fail(
      "Different refcount widths than 16 bits require compatibility level 1.1 or above " +
        "(use version=v3 or greater)",
    );
  }
  const dataFile = options.data_file as string | undefined;
  const dataFileRaw = options.data_file_raw === true;
  if (dataFileRaw && dataFile === undefined) fail("data-file-raw requires data-file");
  if (dataFileRaw && backingFile !== undefined) {
    fail("Backing file and data-file-raw cannot be used at the same time");
  }
  if (dataFile !== undefined && version < 3) {
    fail(
      "External data files are only supported with compatibility level 1.1 and above (use " +
        "version=v3 or greater)",
    );
  }
  const zstd = options.compression_type === "zstd";
  if (zstd && version < 3) {
    fail(
      "Non-zlib compression type is only supported with compatibility level 1.1 and above " +
        "(use version=v3 or greater)",
    );
  }
  const size = (options.size as number | undefined) ?? backingSize;
  if (size === undefined) fail("Image creation needs a size parameter");
  const params: Qcow2CreateParams = {
    // QEMU rounds the virtual size up to whole 512-byte sectors.
    size: Math.ceil(size / 512) * 512,
    version,
    clusterSize: cs,
    refcountBits: rb,
    lazyRefcounts: lazy,
  };
  if (zstd) params.compressionType = 1;
  if (backingFile !== undefined) params.backingFile = backingFile;
  if (backingFormat !== undefined) params.backingFormat = backingFormat;
  if (extendedL2) params.extendedL2 = true;
  if (dataFile !== undefined) params.dataFile = dataFile;
  if (dataFileRaw) params.dataFileRaw = true;
  return params;
}

/** Writes a refcount of 1 for entry `idx` of a refcount block of `bits`-wide entries. */
function setOne(block: Uint8Array, idx: number, bits: number): void {
  if (bits >= 8) {
    block[(idx + 1) * (bits / 8) - 1] = 1;
  } else {
    block[(idx * bits) >> 3]! |= 1 << ((idx * bits) & 7);
  }
}

/**
 * Writes an empty image into `node` (a protocol node): header and extensions in cluster 0,
 * the refcount table from cluster 1, the refcount blocks, then a zeroed L1 table (none for
 * an empty disk, as QEMU's), all with refcount 1. An encrypted image's `luks` region (LUKS
 * header and key material) follows the L1 table, where QEMU's allocation puts it.
 */
export async function formatQcow2(
  node: Node,
  p: Qcow2CreateParams,
  luks?: Uint8Array,
): Promise<void> {
  const cs = p.clusterSize;
  const clusterBits = Math.log2(cs);
  const l1Size = Math.ceil(Math.ceil(p.size / cs) / (cs / (p.extendedL2 ? 16 : 8)));
  let incompatible = p.compressionType ? Incompat.COMPRESSION : 0;
  if (p.extendedL2) incompatible |= Incompat.EXTL2;
  if (p.dataFile !== undefined) incompatible |= Incompat.DATA_FILE;
  const l1Clusters = Math.ceil((l1Size * 8) / cs);
  const luksClusters = luks === undefined ? 0 : Math.ceil(luks.length / cs);
  const perBlock = (cs * 8) / p.refcountBits;
  let rtc = 1;
  let nb = 1;
  for (;;) {
    const total = 1 + rtc + nb + l1Clusters + luksClusters;
    const nb2 = Math.ceil(total / perBlock);
    const rtc2 = Math.max(1, Math.ceil((nb2 * 8) / cs));
    if (nb2 === nb && rtc2 === rtc) break;
    nb = nb2;
    rtc = rtc2;
  }
  const total = 1 + rtc + nb + l1Clusters + luksClusters;
  const luksAt = (1 + rtc + nb + l1Clusters) * cs;
  const h: Qcow2Header = {
    version: p.version,
    backingFileOffset: 0,
    backingFileSize: 0,
    clusterBits,
    size: p.size,
    cryptMethod: luks === undefined ? 0 : CRYPT_LUKS,
    l1Size,
    l1TableOffset: l1Size === 0 ? 0 : (1 + rtc + nb) * cs,
    refcountTableOffset: cs,
    refcountTableClusters: rtc,
    nbSnapshots: 0,
    snapshotsOffset: 0,
    incompatible: BigInt(incompatible),
    compatible: p.lazyRefcounts ? BigInt(COMPAT_LAZY_REFCOUNTS) : 0n,
    autoclear: p.dataFileRaw ? BigInt(AUTOCLEAR_DATA_FILE_RAW) : 0n,
    refcountOrder: Math.log2(p.refcountBits),
    headerLength: p.version >= 3 ? V3_HEADER_LENGTH : V2_HEADER_LENGTH,
    compressionType: p.compressionType ?? 0,
    tail: new Uint8Array(V3_HEADER_LENGTH - 105),
    extensions: [],
    backingFile: p.backingFile,
  };
  setBackingFormat(h, p.backingFormat);
  if (p.dataFile !== undefined) setDataFileName(h, p.dataFile);
  if (luks !== undefined) {
    const pointer = new Uint8Array(16);
    setU64(viewOf(pointer), 0, luksAt);
    setU64(viewOf(pointer), 8, luks.length);
    h.extensions.push({ type: Ext.CRYPTO_HEADER, data: pointer });
  }
  // serializeHeader adds QEMU's feature name table (v3 with clusters over 4 KiB).
  const image = new Uint8Array(total * cs);
  image.set(serializeHeader(h), 0);
  const view = viewOf(image);
  if (view.getUint32(0) !== QCOW2_MAGIC) throw new Error("header serialisation lost the magic");
  for (let i = 0; i < nb; i++) setU64(view, cs + i * 8, (1 + rtc + i) * cs);
  for (let c = 0; c < total; c++) {
    const b = Math.floor(c / perBlock);
    setOne(image.subarray((1 + rtc + b) * cs, (2 + rtc + b) * cs), c % perBlock, p.refcountBits);
  }
  // The L1 table is written as far as its entries go, as QEMU's qcow2_grow_l1_table does:
  // the file ends right after them (a 1 GiB image: 3 clusters and 16 bytes).
  if (luks === undefined) {
    await node.write(0, image.subarray(0, (1 + rtc + nb) * cs + l1Size * 8));
  } else {
    image.set(luks, luksAt);
    await node.write(0, image);
  }
  await node.flush();
}

/**
 * Allocates an L2 table and a data cluster for every guest cluster (preallocation=metadata),
 * then grows the file to cover them (allocating it with `falloc`, writing it with `full`).
 */
export async function preallocateMetadata(
  image: Qcow2Image,
  mode: PreallocMode = "metadata",
): Promise<void> {
  // With an external data file, preallocation went to the data file at its creation.
  const to = Math.ceil(image.header.size / image.cs);
  await image.lock.run(() => preallocate(image, 0, to, mode));
}

/**
 * Creates `filename` through the protocol driver it names, `size` bytes long, with the
 * protocol's own options `extra` (`nocow`, `extent_size_hint`).
 */
async function createProtocolFile(
  registry: DriverRegistry,
  filename: string,
  size: number,
  preallocation: string,
  extra: OptionValues,
  ctx: CreateContext | undefined,
): Promise<void> {
  const proto = registry.protocolFor(filename);
  if (!proto.create) {
    throw new BlockError(
      "ENOTSUP",
      `Protocol driver '${proto.name}' does not support image creation`,
    );
  }
  const opts: OptionValues = { ...extra, filename, size };
  if (preallocation !== "off") opts.preallocation = preallocation;
  await proto.create(
    validateOptions(proto.createOptions ?? {}, opts, `Protocol driver '${proto.name}'`),
    registry,
    ctx,
  );
}

/**
 * Creates a qcow2 image file through the protocol driver its filename names. Options that
 * are not qcow2's go to the protocol driver, for the image file and the data file alike (as
 * QEMU hands them on).
 */
export async function createQcow2(
  given: OptionValues,
  registry: DriverRegistry,
  ctx?: CreateContext,
): Promise<void> {
  const defined: OptionValues = {};
  const protoExtra: OptionValues = {};
  for (const [k, v] of Object.entries(given)) {
    if (v === undefined) continue;
    if (k in QCOW2_CREATE_OPTIONS) defined[k] = v;
    else protoExtra[k] = v;
  }
  const options = validateOptions(QCOW2_CREATE_OPTIONS, defined, "Format driver 'qcow2'");
  const filename = options.filename as string;
  const prealloc = (options.preallocation as string | undefined) ?? "off";
  let backingSize: number | undefined;
  if (options.size === undefined && options.backing_file !== undefined && options.backing_fmt) {
    const g = new Graph({ registry });
    try {
      const name = resolveBackingName(options.backing_file as string, filename);
      const explicit = { driver: options.backing_fmt, "read-only": true };
      const b = await g.open(
        isJsonFilename(name)
          ? mergeJsonFilename(explicit, name)
          : { ...explicit, file: { filename: name } },
        "create",
      );
      backingSize = b.getLength();
      await b.unref("create");
    } finally {
      await g.closeAll();
    }
  }
  // QEMU checks the encryption options as QAPI ones first, then the image's own.
  const request = encryptionRequest(options);
  if (request !== null && "error" in request) fail(request.error);
  const params = createParams(options, backingSize);
  // Made before any file is: a refused encryption leaves nothing behind.
  const luks = await newImageEncryption(request, options, ctx?.objects, {
    version: params.version,
    dataFile: params.dataFile !== undefined,
    preallocation: prealloc,
  });
  if (params.dataFile !== undefined) {
    // The data file takes the virtual size and the preallocation (QEMU creates it first).
    const dataName = resolveBackingName(params.dataFile, filename);
    const dataPrealloc = prealloc === "falloc" || prealloc === "full" ? prealloc : "off";
    await createProtocolFile(registry, dataName, params.size, dataPrealloc, protoExtra, ctx);
  }
  await createProtocolFile(registry, filename, 0, "off", protoExtra, ctx);
  const graph = new Graph({ registry });
  try {
    // The protocol from the filename, parsed as it parses it (an nbd:// URI).
    const node = await graph.open({ filename }, "create");
    try {
      await formatQcow2(node, params, luks ?? undefined);
      if (prealloc !== "off" || params.dataFileRaw) {
        // Preallocation writes metadata only: an encrypted image needs no key for it.
        const q = await graph.open({ driver: "qcow2", file: node.name }, "create", {
          noIo: luks !== null,
        });
        try {
          const mode = (prealloc === "off" ? "metadata" : prealloc) as PreallocMode;
          await preallocateMetadata((q.instance as Qcow2Instance).image, mode);
        } finally {
          await q.unref("create");
        }
      }
    } finally {
      await node.unref("create");
    }
  } finally {
    await graph.closeAll();
  }
}
