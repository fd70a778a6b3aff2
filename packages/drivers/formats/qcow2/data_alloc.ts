/**
 * Host clusters for guest data: newly allocated clusters of the image file, or with an
 * external data file the guest offset itself (data clusters there have no refcounts, and a
 * guest cluster always lives at its own offset, as QEMU's `do_alloc_cluster_offset` does).
 *
 * @module
 */

import type { Qcow2Image } from "./image.ts";

/**
 * Host clusters for the `count` guest clusters from `g` without waiting: the data file's
 * offset, or clusters from the refcount cache; null when that needs the lock (it is held, or
 * the cache must load): then call {@link allocData}.
 */
export function allocDataCached(image: Qcow2Image, g: number, count: number): number | null {
  if (image.external) return g * image.cs;
  // Not past an allocation waiting for the lock: clusters go out in request order.
  return image.lock.busy ? null : image.refcounts.allocCached(count);
}

/** Host clusters for the `count` guest clusters from `g`. Call with `lock` free. */
export async function allocData(image: Qcow2Image, g: number, count: number): Promise<number> {
  return allocDataCached(image, g, count) ??
    await image.lock.run(() => image.refcounts.alloc(count));
}

/** {@link allocData} for callers holding `lock`. */
export function allocDataLocked(image: Qcow2Image, g: number, count: number): Promise<number> {
  return image.external ? Promise.resolve(g * image.cs) : image.refcounts.alloc(count);
}

/** Gives back clusters from {@link allocData} that were never linked (a failed write). */
export async function unallocData(image: Qcow2Image, host: number, count: number): Promise<void> {
  if (image.external || image.broken) return;
  await image.lock.run(() => image.refcounts.update(host / image.cs, count, -1));
}
