/**
 * Compressed writes (`ReqFlags.WRITE_COMPRESSED`, `qemu-img convert -c`): whole clusters
 * (the last one may end at the end of the disk) are compressed and packed byte by byte into
 * clusters that several compressed clusters share, as QEMU's `qcow2_alloc_bytes` does. Like
 * QEMU, a compressed write never overwrites an allocated cluster.
 *
 * @module
 */

import { BlockError, type IoVector } from "@blockgraph/core";
import { compressCluster, compressedEntry } from "./compressed.ts";
import { classify } from "./extent.ts";
import type { Qcow2Image } from "./image.ts";

/**
 * Reserves `n` bytes for compressed data; returns their offset. The bytes follow the last
 * compressed cluster while they fit in its host cluster and its refcount is below the
 * maximum (QEMU's `qcow2_alloc_bytes`); else they start a new cluster. Call with `lock` held.
 */
async function allocBytes(image: Qcow2Image, n: number): Promise<number> {
  const cs = image.cs;
  const at = image.freeByte;
  if (at !== 0 && at % cs !== 0 && (at % cs) + n <= cs) {
    const c = Math.floor(at / cs);
    if ((await image.refcounts.get(c)) < image.refcounts.max) {
      await image.refcounts.update(c, 1, 1);
      image.freeByte = at + n;
      return at;
    }
  }
  const off = await image.refcounts.alloc(Math.ceil(n / cs));
  image.freeByte = off + n;
  return off;
}

/**
 * Writes one cluster at guest `offset` compressed; returns false when it does not compress
 * (the caller writes it normally).
 */
async function writeOne(image: Qcow2Image, offset: number, data: Uint8Array): Promise<boolean> {
  const packed = await compressCluster(data, image.header.compressionType);
  if (!packed) return false;
  const g = offset / image.cs;
  for (;;) {
    const busy = image.claims.busy(g, 1);
    if (!busy) break;
    await busy;
  }
  const release = image.claims.claim(g, 1);
  try {
    const host = await image.lock.run(async () => {
      const [hi, lo] = await image.entryAt(g);
      const kind = classify(hi, lo, image.kindMode);
      if (kind !== "unallocated" && kind !== "zero") {
        throw new BlockError(
          "EIO",
          `qcow2: a compressed write cannot overwrite the allocated cluster at offset ${offset}`,
          { offset },
        );
      }
      return await allocBytes(image, packed.length);
    });
    await image.write("data", host, packed);
    await image.lock.run(async () => {
      const [hi, lo] = compressedEntry(host, packed.length, image.header.clusterBits);
      await image.setEntry(g, hi >>> 0, lo >>> 0);
    });
  } finally {
    release();
  }
  return true;
}

/**
 * Writes `bytes` at guest `offset` compressed, cluster by cluster; clusters that do not
 * compress go through `plain`. Offsets must be cluster aligned and lengths whole clusters,
 * except a last cluster that ends at the end of the disk.
 */
export async function writeCompressed(
  image: Qcow2Image,
  offset: number,
  bytes: number,
  qiov: IoVector,
  qiovOffset: number,
  plain: (offset: number, bytes: number, qiovOffset: number) => Promise<void>,
): Promise<void> {
  const cs = image.cs;
  const end = offset + bytes;
  if (offset % cs !== 0 || (end % cs !== 0 && end !== image.header.size)) {
    throw new BlockError(
      "EINVAL",
      `Compressed writes must cover whole clusters (offset ${offset}, ${bytes} bytes, cluster ` +
        `size ${cs})`,
    );
  }
  for (let at = offset; at < end; at += cs) {
    const n = Math.min(cs, end - at);
    const data = new Uint8Array(cs);
    qiov.copyTo(qiovOffset + (at - offset), data, 0, n);
    if (!(await writeOne(image, at, data))) await plain(at, n, qiovOffset + (at - offset));
  }
}
