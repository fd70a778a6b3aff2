/**
 * The allocating write path of qcow2: new clusters (or a COPIED preallocated zero cluster)
 * receive the guest data with the untouched head and tail of the first and last cluster
 * copied from what they read before (backing file, zeros, a shared or compressed cluster),
 * then the L2 entries point at them and the old clusters are freed.
 *
 * @module
 */

import { BlockError, IoVector, isAllocatedAbove, type Node, ReqFlags } from "@blockgraph/core";
import { allocDataCached, unallocData } from "./data_alloc.ts";
import { compressedPlace, decompressCluster } from "./compressed.ts";
import type { Extent } from "./extent.ts";
import { copiedEntry } from "./format.ts";
import type { Qcow2Image } from "./image.ts";

/** Reads and inflates the compressed cluster `ext` names. */
export async function decompressExtent(image: Qcow2Image, ext: Extent): Promise<Uint8Array> {
  const p = compressedPlace(ext.hi, ext.lo, image.header.clusterBits);
  const fileLen = image.file.getLength();
  if (p.offset >= fileLen) {
    throw image.corrupt(`Compressed cluster at ${p.offset} is beyond the end of the image file`);
  }
  const buf = new Uint8Array(Math.min(p.bytes, fileLen - p.offset));
  await image.file.read(p.offset, buf);
  return decompressCluster(buf, image.cs, image.header.compressionType);
}

/**
 * Writes `ext.bytes` at guest `offset` into new clusters (or, for a COPIED zero-alloc
 * cluster, into the cluster it has), with the head and tail of the touched clusters copied
 * from what they read before, then points the L2 entries at them.
 */
export async function allocatingWrite(
  image: Qcow2Image,
  backing: Node | null,
  ext: Extent,
  offset: number,
  qiov: IoVector,
  qiovOffset: number,
): Promise<void> {
  const cs = image.cs;
  const bytes = ext.bytes;
  const gStart = Math.floor(offset / cs) * cs;
  const gEnd = Math.ceil((offset + bytes) / cs) * cs;
  const count = (gEnd - gStart) / cs;
  const reuse = ext.kind === "zero-alloc" && ext.copied;
  if (!reuse) await image.ensureL2(gStart / cs, count);
  const target = reuse
    ? ext.host - (offset - gStart)
    : allocDataCached(image, gStart / cs, count) ??
      await image.lock.run(() => image.refcounts.alloc(count));
  try {
    await writeWithCow(image, backing, ext, offset, target, qiov, qiovOffset);
  } catch (e) {
    if (!reuse) await unallocData(image, target, count);
    throw e;
  }
  await linkAllocated(image, ext, offset, target, count, reuse);
}

/**
 * Writes the guest data at `offset` with the old head and tail of its clusters. When those
 * read as zeros (a zero cluster, or nothing allocated in the whole backing chain), the new
 * clusters are zeroed with one write-zeroes that may not fall back to writing buffers
 * (`fallocate` ZERO_RANGE on a file) and only the guest data is written, as QEMU does: 4 KiB
 * allocating writes into 64 KiB clusters then move 4 KiB, not 64.
 */
async function writeWithCow(
  image: Qcow2Image,
  backing: Node | null,
  ext: Extent,
  offset: number,
  target: number,
  qiov: IoVector,
  qiovOffset: number,
): Promise<void> {
  const cs = image.cs;
  const bytes = ext.bytes;
  const gStart = Math.floor(offset / cs) * cs;
  const gEnd = Math.ceil((offset + bytes) / cs) * cs;
  if (
    (offset > gStart || gEnd > offset + bytes) && image.zeroCowAllowed &&
    (ext.kind === "zero" || ext.kind === "zero-alloc" ||
      (ext.kind === "unallocated" && (backing === null ||
        await unallocatedBelow(backing, gStart, offset - gStart) &&
          await unallocatedBelow(backing, offset + bytes, gEnd - offset - bytes)))) &&
    await zeroClusters(image, target, gEnd - gStart)
  ) {
    await image.writeData(target + (offset - gStart), bytes, qiov, qiovOffset);
    return;
  }
  const parts = new IoVector();
  if (offset > gStart) {
    parts.add(await oldContent(image, backing, ext, gStart, offset - gStart, offset));
  }
  qiov.slices(qiovOffset, bytes, parts.iov);
  parts.size += bytes;
  if (gEnd > offset + bytes) {
    parts.add(await oldContent(image, backing, ext, offset + bytes, gEnd - offset - bytes, offset));
  }
  await image.writeData(target, parts.size, parts, 0);
}

/**
 * Whether `bytes` at `offset` are allocated nowhere in the chain from `backing` down (so
 * they read as zeros), as QEMU's `is_zero_cow` asks before zeroing new clusters instead of
 * copying their head and tail; a range past the backing file's end counts as allocated
 * there, as in QEMU.
 */
async function unallocatedBelow(
  backing: Node,
  offset: number,
  bytes: number,
): Promise<boolean> {
  if (bytes === 0) return true;
  if (offset + bytes > backing.getLength()) return false;
  const r = await isAllocatedAbove(backing, null, offset, bytes);
  return !r.allocated && r.pnum === bytes;
}

/**
 * Zeroes `bytes` of new clusters at host `target` without writing buffers; false (and never
 * again for this image) when the image file cannot, so the caller copies zeros instead.
 */
async function zeroClusters(image: Qcow2Image, target: number, bytes: number): Promise<boolean> {
  const err = image.external ? null : image.overlapError("data", target, bytes);
  if (err) throw err;
  try {
    await image.data.pwriteZeroes(target, bytes, ReqFlags.NO_FALLBACK);
    return true;
  } catch (e) {
    if (!(e instanceof BlockError) || e.code !== "ENOTSUP") throw e;
    image.zeroCowAllowed = false;
    return false;
  }
}

/** Points the L2 entries of the guest clusters written at `offset` to `target`. */
async function linkAllocated(
  image: Qcow2Image,
  ext: Extent,
  offset: number,
  target: number,
  count: number,
  reuse: boolean,
): Promise<void> {
  const cs = image.cs;
  const gStart = Math.floor(offset / cs) * cs;
  // With an external data file, the host cluster is the guest's own: nothing to free.
  const frees = !reuse && !image.external && ext.kind !== "unallocated" && ext.kind !== "zero";
  if (!frees && !image.lock.held && image.setEntriesCached(gStart / cs, count, target)) return;
  await image.lock.run(async () => {
    const g0 = gStart / cs;
    const oldBase = ext.host - (offset - gStart);
    for (let k = 0; k < count; k++) {
      const host = target + k * cs;
      await image.setEntry(g0 + k, ...copiedEntry(host));
      if (!frees) continue;
      if (ext.kind === "normal") image.frees.add(oldBase + k * cs, 1, "never");
      else if (ext.kind === "compressed" || ext.kind === "zero-alloc") {
        image.frees.release(ext.hi, ext.lo, "never");
      }
    }
    await image.frees.commit();
  });
}

/**
 * What `bytes` bytes at guest `at` read as before a write to `ext` (which starts at guest
 * `extStart`): the COW source.
 */
async function oldContent(
  image: Qcow2Image,
  backing: Node | null,
  ext: Extent,
  at: number,
  bytes: number,
  extStart: number,
): Promise<Uint8Array> {
  const buf = new Uint8Array(bytes);
  if (ext.kind === "normal") {
    await image.data.read(ext.host + (at - extStart), buf);
  } else if (ext.kind === "compressed") {
    buf.set(
      (await decompressExtent(image, ext)).subarray(at % image.cs, at % image.cs + bytes),
    );
  } else if (ext.kind === "unallocated") {
    if (backing) await backing.read(at, buf);
  }
  return buf;
}
