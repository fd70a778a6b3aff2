/**
 * One step of a guest write to an image with plain L2 entries: the first extent of the range
 * goes in place into the clusters it has (COPIED data clusters, recorded as in flight so a
 * free waits for it), or, holding the claim on its guest clusters, into newly allocated ones
 * (allocating_write.ts). Extended L2 entries have their own step (subcluster_write.ts).
 *
 * @module
 */

import type { IoVector, Node } from "@blockgraph/core";
import { allocatingWrite } from "./allocating_write.ts";
import type { Extent } from "./extent.ts";
import type { Qcow2Image } from "./image.ts";

/** What a step found to do: write in place (`end` the in-flight record), or allocate. */
interface Step {
  ext: Extent;
  /** Releases the claim on the guest clusters (an allocating step). */
  release: (() => void) | null;
  /** Another write's claim to wait for before trying again. */
  busy: Promise<void> | null;
  /** Ends the in-flight record of an in-place step. */
  end: (() => void) | null;
}

/**
 * Decides the step for `ext`, found at `offset`, and records it (in flight or claimed).
 * Runs synchronously, so that the lookup and the record are one step under the lock.
 */
function decide(image: Qcow2Image, offset: number, ext: Extent): Step {
  const cs = image.cs;
  if (ext.kind === "normal" && ext.copied) {
    const first = Math.floor(ext.host / cs);
    const end = image.inflight.begin(first, Math.ceil((ext.host + ext.bytes) / cs) - first);
    return { ext, release: null, busy: null, end };
  }
  // One allocation stays within one L2 table, as QEMU's handle_alloc does: each table is
  // made just before the data it maps, so the file's layout is QEMU's (small clusters).
  const span = image.l2Entries * cs;
  const l2End = (Math.floor(offset / span) + 1) * span;
  if (offset + ext.bytes > l2End) ext = { ...ext, bytes: l2End - offset };
  const first = Math.floor(offset / cs);
  const count = Math.ceil((offset + ext.bytes) / cs) - first;
  const busy = image.claims.busy(first, count);
  if (busy) return { ext, release: null, busy, end: null };
  return { ext, release: image.claims.claim(first, count), busy: null, end: null };
}

/**
 * Writes the first extent of `[offset, offset+bytes)` from `qiov` at `qiovOffset`; returns
 * the bytes done (0: it waited for another write's claim; try again). `backing` is the
 * image's backing node, for the head and tail of new clusters.
 */
export async function clusterWriteStep(
  image: Qcow2Image,
  backing: Node | null,
  offset: number,
  bytes: number,
  qiov: IoVector,
  qiovOffset: number,
): Promise<number> {
  // With the metadata lock free and the L2 table cached, the lookup and the claim (or the
  // in-flight record) happen in one synchronous step: as if the lock were taken and given
  // back at once, without the queue and the microtask hops of taking it.
  const cached = image.lock.held ? null : image.lookupCached(offset, bytes);
  const step = cached
    ? decide(image, offset, cached)
    : await image.lock.run(async () => decide(image, offset, await image.lookup(offset, bytes)));
  if (step.busy) {
    await step.busy;
    return 0;
  }
  const ext = step.ext;
  if (step.end) {
    try {
      await image.writeData(ext.host, ext.bytes, qiov, qiovOffset);
    } finally {
      step.end();
    }
    return ext.bytes;
  }
  try {
    await allocatingWrite(image, backing, ext, offset, qiov, qiovOffset);
  } finally {
    step.release!();
  }
  return ext.bytes;
}
