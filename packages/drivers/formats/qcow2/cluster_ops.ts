/**
 * Write-zeroes and discard on images with standard L2 entries (extended L2 entries have
 * theirs in `subcluster_ops.ts`), and the walk both run under: every guest cluster of a
 * range under the metadata lock, after any allocation in flight on it, with the frees it
 * queued committed at the end.
 *
 * @module
 */

import { BlockError, ReqFlags } from "@blockgraph/core";
import { classify } from "./extent.ts";
import { COPIED_HI, ZERO_LO } from "./format.ts";
import type { Qcow2Image } from "./image.ts";

/** What {@link forEachCluster} runs per guest cluster: its L2 entry and subcluster bitmaps. */
export type ClusterStep = (
  g: number,
  hi: number,
  lo: number,
  zeroBits: number,
  allocBits: number,
) => Promise<void>;

/**
 * Runs `op` on every guest cluster of `[start, end)` under the metadata lock, after any
 * allocation in flight on those clusters, then commits the frees it queued.
 */
export async function forEachCluster(
  image: Qcow2Image,
  start: number,
  end: number,
  op: ClusterStep,
): Promise<void> {
  const cs = image.cs;
  const first = start / cs;
  const last = Math.ceil(end / cs);
  for (;;) {
    // The claim comes out of the lock boxed: a promise returned as it is would be awaited
    // inside the lock, which the allocation holding the claim needs to finish.
    const busy = await image.lock.run(async () => {
      const b = image.claims.busy(first, last - first);
      if (b) return { claim: b };
      try {
        for (let g = first; g < last; g++) {
          const [hi, lo, zeroBits, allocBits] = await image.entryAt(g);
          await op(g, hi, lo, zeroBits, allocBits);
        }
      } finally {
        await image.frees.commit();
      }
      return null;
    });
    if (!busy) return;
    await busy.claim;
  }
}

/**
 * Makes the whole clusters of `[offset, end)` read as zeros on version 3 with the zero flag,
 * unallocated clusters too (QEMU's `zero_in_l2_slice`: only a plain zero cluster, or a
 * preallocated one kept without MAY_UNMAP, is left as it is); COPIED clusters stay
 * preallocated zero clusters unless MAY_UNMAP frees them. On version 2 (only called with a
 * backing file) a cluster that is not already zero fails with ENOTSUP: the generic layer
 * writes zero buffers. A raw data file is zeroed first and keeps its mapping.
 */
export async function zeroClusters(
  image: Qcow2Image,
  offset: number,
  end: number,
  flags: number,
): Promise<void> {
  if (image.dataRaw) {
    await image.data.pwriteZeroes(offset, end - offset, flags & ReqFlags.MAY_UNMAP);
  }
  await forEachCluster(image, offset, end, zeroClusterStep(image, flags));
}

/**
 * The step of {@link zeroClusters} for one whole cluster (the data file of a raw external
 * one is the caller's): run under the metadata lock, and commit the frees it queues.
 */
export function zeroClusterStep(image: Qcow2Image, flags: number): ClusterStep {
  const v3 = image.header.version >= 3;
  return async (g, hi, lo) => {
    const kind = classify(hi, lo, image.kindMode);
    if (kind === "zero") return;
    if (!v3) throw new BlockError("ENOTSUP", "qcow2 version 2 has no zero clusters");
    const copied = (hi & COPIED_HI) !== 0;
    const unmap = (flags & ReqFlags.MAY_UNMAP) !== 0 && !image.dataRaw;
    if (kind === "zero-alloc" && copied && !unmap) return;
    if (kind === "normal" && copied && !unmap) {
      await image.setEntry(g, hi, (lo | ZERO_LO) >>> 0);
      return;
    }
    await image.setEntry(g, 0, ZERO_LO);
    image.frees.release(hi, lo, "request");
  };
}

/**
 * Zeroes the whole of guest cluster `[start, end)` for a write-zeroes of part of it, when it
 * holds no data: unallocated (the caller found the backing chain reading zeros beside the
 * request) or already a zero cluster. A cluster with data fails with ENOTSUP (the generic
 * layer writes zeros where asked), as QEMU's `qcow2_co_pwrite_zeroes`. On version 2 (only
 * called without a backing file) an unallocated cluster reads as zeros as it is.
 */
export async function zeroWholeCluster(
  image: Qcow2Image,
  start: number,
  end: number,
  flags: number,
): Promise<void> {
  let zeroed = false;
  const zero = zeroClusterStep(image, flags);
  await forEachCluster(image, start, end, async (g, hi, lo, zeroBits, allocBits) => {
    const kind = classify(hi, lo, image.kindMode);
    if (kind !== "unallocated" && kind !== "zero" && kind !== "zero-alloc") return;
    zeroed = true;
    // Version 2 (only without a backing file here): unallocated reads as zeros as it is.
    if (image.header.version >= 3) await zero(g, hi, lo, zeroBits, allocBits);
  });
  if (!zeroed) throw new BlockError("ENOTSUP", "qcow2 zeroes whole clusters only");
}

/**
 * Discards the whole clusters of `[start, end)` as QEMU's `discard_in_l2_slice` (not a full
 * discard): on version 3 a discarded cluster becomes a zero cluster when it was allocated or
 * a backing file (`backed`) is below; on version 2, which has no zero flag, it becomes
 * unallocated. Unallocated and zero clusters without a backing file stay as they are.
 */
export async function discardClusters(
  image: Qcow2Image,
  start: number,
  end: number,
  backed: boolean,
): Promise<void> {
  const newLo = image.header.version >= 3 ? ZERO_LO : 0;
  await forEachCluster(image, start, end, async (g, hi, lo) => {
    const kind = classify(hi, lo, image.kindMode);
    if (!backed && (kind === "unallocated" || kind === "zero")) return;
    if (hi === 0 && lo === newLo) return;
    await image.setEntry(g, 0, newLo);
    image.frees.release(hi, lo, "request");
  });
}
