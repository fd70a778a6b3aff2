/**
 * Compressed clusters: the compressed cluster descriptor (offset and sector count packed by
 * cluster size), compression and decompression (raw deflate with QEMU's 4 KiB window for
 * zlib, zstd) through `node:zlib`. That module is imported at the first compressed cluster,
 * not with this one: importing it starts Deno's Node compatibility layer, about 20 ms of
 * every process start, which most commands never need.
 *
 * @module
 */

import { BlockError } from "@blockgraph/core";

const importZlib = () => import("node:zlib");
type Zlib = Awaited<ReturnType<typeof importZlib>>;
let zlib: Zlib | null = null;
let zlibLoading: Promise<Zlib> | null = null;

/** `node:zlib`, imported at the first call. */
function loadZlib(): Promise<Zlib> {
  return zlibLoading ??= importZlib().then((m) => zlib = m);
}

/** Where a compressed cluster's data lies in the image file. */
export interface CompressedPlace {
  /** The byte offset of the compressed data (not aligned). */
  offset: number;
  /** How many bytes may hold it: to the end of its last 512-byte sector. */
  bytes: number;
  /** Where the sectors it occupies start (the offset rounded down to 512). */
  sectorStart: number;
}

/** Decodes the compressed cluster descriptor of an L2 entry (`hi`:`lo`, flags included). */
export function compressedPlace(hi: number, lo: number, clusterBits: number): CompressedPlace {
  const v = (BigInt(hi & 0x3fffffff) << 32n) | BigInt(lo >>> 0);
  const x = BigInt(62 - (clusterBits - 8));
  const offset = Number(v & ((1n << x) - 1n));
  const sectors = Number((v >> x) & ((1n << BigInt(clusterBits - 8)) - 1n)) + 1;
  const sectorStart = offset - (offset % 512);
  return { offset, bytes: sectors * 512 - (offset % 512), sectorStart };
}

/** Encodes a compressed cluster descriptor: the entry's high and low words, flag included. */
export function compressedEntry(
  offset: number,
  bytes: number,
  clusterBits: number,
): [number, number] {
  const sectors = Math.ceil((offset % 512 + bytes) / 512);
  const x = BigInt(62 - (clusterBits - 8));
  const v = (1n << 62n) | (BigInt(sectors - 1) << x) | BigInt(offset);
  return [Number(v >> 32n), Number(v & 0xffffffffn)];
}

const ZSTD_MAGIC = 0xfd2fb528;

/**
 * The length of the zstd frame at the start of `data` (RFC 8878: the frame header, then
 * blocks of 3-byte headers up to the one marked last, then the optional checksum), or -1 when
 * `data` does not hold a whole frame. A compressed cluster is followed by whatever shares its
 * last sector (padding, the next cluster's data), which Node's zstd refuses as a bad frame.
 */
export function zstdFrameLength(data: Uint8Array): number {
  if (data.length < 6) return -1;
  const magic = (data[0]! | (data[1]! << 8) | (data[2]! << 16) | (data[3]! << 24)) >>> 0;
  if (magic !== ZSTD_MAGIC) return -1;
  const fhd = data[4]!;
  const fcsFlag = fhd >> 6;
  const singleSegment = (fhd >> 5) & 1;
  const checksum = (fhd >> 2) & 1;
  const didFlag = fhd & 3;
  let at = 5 + (singleSegment ? 0 : 1) + [0, 1, 2, 4][didFlag]! +
    [singleSegment ? 1 : 0, 2, 4, 8][fcsFlag]!;
  for (;;) {
    if (at + 3 > data.length) return -1;
    const h = data[at]! | (data[at + 1]! << 8) | (data[at + 2]! << 16);
    at += 3;
    const type = (h >> 1) & 3;
    const size = h >>> 3;
    if (type === 3) return -1;
    at += type === 1 ? 1 : size;
    if (at > data.length) return -1;
    if (h & 1) break;
  }
  at += checksum ? 4 : 0;
  return at <= data.length ? at : -1;
}

/**
 * Decompresses one cluster of `clusterSize` bytes from `data` (which may run past the end of
 * the stream). `type` is the header's compression type: 0 zlib (raw deflate), 1 zstd (one
 * frame, decoded alone: what follows it in `data` is not the cluster's).
 */
export async function decompressCluster(
  data: Uint8Array,
  clusterSize: number,
  type: number,
): Promise<Uint8Array> {
  const z = zlib ?? await loadZlib();
  let out: Uint8Array;
  try {
    if (type === 0) {
      out = z.inflateRawSync(data, { finishFlush: z.constants.Z_SYNC_FLUSH });
    } else {
      const n = zstdFrameLength(data);
      if (n < 0) throw new Error("not a whole zstd frame");
      out = z.zstdDecompressSync(data.subarray(0, n));
    }
  } catch (e) {
    throw new BlockError("EIO", `Could not decompress cluster: ${(e as Error).message}`);
  }
  if (out.length < clusterSize) {
    throw new BlockError(
      "EIO",
      `Compressed cluster decompressed to ${out.length} bytes, not ${clusterSize}`,
    );
  }
  return out.length === clusterSize ? out : out.subarray(0, clusterSize);
}

/**
 * Compresses one cluster as QEMU does (raw deflate with a 4 KiB window, or a zstd frame);
 * returns null when the result would not be smaller than the cluster (QEMU then writes the
 * cluster uncompressed).
 */
export async function compressCluster(data: Uint8Array, type: number): Promise<Uint8Array | null> {
  const z = zlib ?? await loadZlib();
  const out = type === 0
    ? z.deflateRawSync(data, { windowBits: 12, memLevel: 9 })
    : z.zstdCompressSync(data);
  return out.length < data.length - 1
    ? new Uint8Array(out.buffer, out.byteOffset, out.length)
    : null;
}
