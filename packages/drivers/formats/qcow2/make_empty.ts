/**
 * Emptying a qcow2 image (QEMU's `bdrv_make_empty` for qcow2, which `qemu-img commit` runs on
 * the top image unless `-d`): every guest cluster becomes unallocated, so the image reads
 * through to its backing file again, and the L2 tables of the active tree are let go.
 *
 * Unlike QEMU's fast path, which rebuilds the metadata from scratch when nothing else holds
 * clusters, this always takes the route of its fallback (a full discard of every cluster),
 * but a whole L2 table at a time: the active L1 table is cleared and flushed, then the
 * refcounts of every L2 table and of every cluster they named drop by one (the frees' order
 * in image.ts). Clusters and tables shared with internal snapshots keep their other
 * references; only those reaching zero are freed (and discarded in the file).
 *
 * @module
 */

import { classify } from "./extent.ts";
import { entryOffset, viewOf } from "./format.ts";
import type { Qcow2Image } from "./image.ts";

/**
 * Makes every guest cluster of `image` unallocated and frees the active L2 tables. Call with
 * `lock` held and no allocation or in-place write in flight.
 */
export async function makeEmptyImage(image: Qcow2Image): Promise<void> {
  // Start from the structures as they are on disk (nothing pending, no dirty table).
  await image.flushCaches();
  await image.flush();
  const cs = image.cs;
  const tables: number[] = [];
  // What to free, queued only once the cleared L1 table is written (a failed write frees
  // nothing).
  const frees: (() => void)[] = [];
  for (let i = 0; i < image.l1.length; i++) {
    const l2Off = image.l1[i]!;
    if (l2Off === 0) continue;
    tables.push(l2Off);
    const view = viewOf(await image.l2.get(l2Off));
    // Runs of host-contiguous clusters are freed together, whatever lies between them in
    // the guest (a run of unallocated entries does not end one): one discard of a 512 MiB
    // run instead of 512 of 1 MiB took a 1 GiB half-allocated image's emptying from about
    // 270 ms to about 140 ms, the kernel's cost of freeing the cached pages.
    let runStart = 0;
    let runCount = 0;
    const endRun = () => {
      const [first, count] = [runStart, runCount];
      if (count > 0) frees.push(() => image.frees.add(first, count, "snapshot"));
      runCount = 0;
    };
    for (let j = 0; j < image.l2Entries; j++) {
      const hi = view.getUint32(j * image.l2Stride);
      const lo = view.getUint32(j * image.l2Stride + 4);
      const kind = classify(hi, lo, image.kindMode);
      if ((kind === "normal" || kind === "zero-alloc") && image.external) {
        frees.push(() => image.frees.release(hi, lo, "snapshot"));
      } else if (kind === "normal" || kind === "zero-alloc") {
        const host = entryOffset(hi, lo);
        if (runCount > 0 && host === runStart + runCount * cs) {
          runCount++;
          continue;
        }
        endRun();
        runStart = host;
        runCount = 1;
      } else if (kind === "compressed") {
        frees.push(() => image.frees.release(hi, lo, "snapshot"));
      }
    }
    endRun();
    frees.push(() => image.frees.add(l2Off, 1, "snapshot"));
  }
  if (tables.length === 0) return;
  // The cleared L1 table reaches the disk before any refcount drops.
  const l1Bytes = new Uint8Array(image.l1.length * 8);
  await image.write("active L1 table", image.header.l1TableOffset, l1Bytes);
  await image.flush();
  for (let i = 0; i < image.l1.length; i++) {
    image.l1[i] = 0;
    image.l1Copied[i] = false;
  }
  for (const off of tables) {
    image.map.setL2(off, false);
    image.l2.drop(off);
  }
  for (const f of frees) f();
  await image.frees.commit();
  await image.refcounts.writeback();
  await image.flush();
}
