/**
 * Write-zeroes and discard on images with extended L2 entries: whole clusters get every
 * "reads as zero" bit (and, with MAY_UNMAP or when compressed, lose their host cluster, as
 * QEMU's `zero_in_l2_slice` does); partial clusters, at subcluster granularity, get the zero
 * bits of the subclusters they cover and lose their "allocated" bits. Discard works on whole
 * clusters: they lose their host cluster and read as zeros.
 *
 * @module
 */

import { BlockError, ReqFlags } from "@blockgraph/core";
import { classify, invalidBitmap, invalidEntry } from "./extent.ts";
import { ALL_SUBCLUSTERS, subMask } from "./format.ts";
import { type ClusterStep, forEachCluster } from "./cluster_ops.ts";
import type { Qcow2Image } from "./image.ts";

/** Throws the corruption error when the entry of guest cluster `g` is invalid. */
function checkEntry(image: Qcow2Image, g: number, hi: number, lo: number, zb: number, ab: number) {
  const kind = classify(hi, lo, image.kindMode);
  const why = invalidBitmap(kind, zb, ab);
  if (why !== null) {
    throw invalidEntry(
      image,
      why,
      image.l1[Math.floor(g / image.l2Entries)] ?? 0,
      g % image.l2Entries,
    );
  }
  return kind;
}

/**
 * Makes guest `[offset, end)` read as zeros. Offsets must be subcluster aligned (the end may
 * be the end of the disk); a partial compressed cluster fails with ENOTSUP (the generic layer
 * then writes zeros). A raw data file is zeroed first and keeps its mapping.
 */
export async function zeroSubclusters(
  image: Qcow2Image,
  offset: number,
  end: number,
  flags: number,
): Promise<void> {
  const cs = image.cs;
  const sc = image.sc;
  if (offset % sc !== 0 || (end % sc !== 0 && end !== image.header.size)) {
    throw new BlockError("ENOTSUP", "qcow2 zeroes whole subclusters only");
  }
  if (image.dataRaw) {
    await image.data.pwriteZeroes(offset, end - offset, flags & ReqFlags.MAY_UNMAP);
  }
  const start = Math.floor(offset / cs) * cs;
  const step = zeroSubclusterStep(image, offset, end, image.header.size, flags);
  await forEachCluster(image, start, end, step);
}

/**
 * The step of {@link zeroSubclusters} over `[offset, end)` of a disk of `size` bytes (the
 * data file of a raw external one is the caller's): run under the metadata lock on every
 * cluster the range touches, and commit the frees it queues.
 */
export function zeroSubclusterStep(
  image: Qcow2Image,
  offset: number,
  end: number,
  size: number,
  flags: number,
): ClusterStep {
  const cs = image.cs;
  const sc = image.sc;
  return async (g, hi, lo, zb, ab) => {
    const kind = checkEntry(image, g, hi, lo, zb, ab);
    const gStart = g * cs;
    const a = Math.max(offset, gStart);
    const b = Math.min(end, gStart + cs);
    if (a === gStart && (b === gStart + cs || b === size)) {
      const unmap = !image.dataRaw &&
        (kind === "compressed" || ((flags & ReqFlags.MAY_UNMAP) !== 0 && kind === "normal"));
      if (unmap) {
        await image.setEntry(g, 0, 0, ALL_SUBCLUSTERS, 0);
        image.frees.release(hi, lo, "request");
      } else if (zb >>> 0 !== ALL_SUBCLUSTERS || ab !== 0) {
        await image.setEntry(g, hi, lo, ALL_SUBCLUSTERS, 0);
      }
      return;
    }
    if (kind === "compressed") {
      throw new BlockError("ENOTSUP", "qcow2 zeroes part of a compressed cluster by writing");
    }
    const mask = subMask((a - gStart) / sc, Math.ceil((b - gStart) / sc));
    if ((zb & mask) >>> 0 === mask && (ab & mask) === 0) return;
    await image.setEntry(g, hi, lo, zb | mask, ab & ~mask);
  };
}

/**
 * Discards the whole clusters of `[start, end)` (cluster aligned, the end may be the end of
 * the disk): their host clusters are freed and every subcluster reads as zeros. Clusters
 * with no host cluster are left alone unless a backing file (`backed`) shows through them,
 * as QEMU's `discard_in_l2_slice`.
 */
export async function discardSubclusters(
  image: Qcow2Image,
  start: number,
  end: number,
  backed: boolean,
): Promise<void> {
  await forEachCluster(image, start, end, async (g, hi, lo, zb, ab) => {
    const kind = checkEntry(image, g, hi, lo, zb, ab);
    if (kind === "unallocated" && (!backed || zb >>> 0 === ALL_SUBCLUSTERS)) return;
    await image.setEntry(g, 0, 0, ALL_SUBCLUSTERS, 0);
    image.frees.release(hi, lo, "request");
  });
}
