/**
 * The queue of qcow2 clusters waiting to be freed. A cluster an L2 entry or a table stopped
 * naming is released only after the change is stable on disk (`commit`: L2 cache written
 * and flushed) and after in-place writes still in flight to it have finished, so a crash
 * leaves at most a leaked cluster, never one both freed and referenced. Each free says why
 * (QEMU's discard types: `request` for guest discards and write-zeroes, `snapshot`, `other`,
 * `never`, `always`), and the node's `pass-discard-*` options (`image.passDiscard`) decide
 * whether its clusters are discarded in the file once free.
 *
 * @module
 */

import { compressedPlace } from "./compressed.ts";
import { classify } from "./extent.ts";
import { entryOffset } from "./format.ts";
import type { Qcow2Image } from "./image.ts";
import type { DiscardType } from "./runtime_options.ts";

/**
 * One queued free: `count` clusters from cluster `first` (of the data file when `data`),
 * freed for `type`.
 */
interface PendingFree {
  first: number;
  count: number;
  type: DiscardType;
  data?: boolean;
}

/** The clusters an image frees once nothing on disk names them (see the module doc). */
export class FreeQueue {
  readonly #image: Qcow2Image;
  readonly #queue: PendingFree[] = [];

  /** A queue for `image`. */
  constructor(image: Qcow2Image) {
    this.#image = image;
  }

  /**
   * Queues the release of what an old L2 entry referenced (after the new entry is stable),
   * freed for `type`.
   */
  release(hi: number, lo: number, type: DiscardType): void {
    const image = this.#image;
    const kind = classify(hi, lo, image.kindMode);
    if (kind === "normal" || kind === "zero-alloc") {
      if (image.external) {
        this.#queue.push({
          first: entryOffset(hi, lo) / image.cs,
          count: 1,
          type,
          data: true,
        });
        return;
      }
      this.add(entryOffset(hi, lo), 1, type);
    } else if (kind === "compressed") {
      const p = compressedPlace(hi, lo, image.header.clusterBits);
      const first = Math.floor(p.sectorStart / image.cs);
      const last = Math.floor((p.offset + p.bytes - 1) / image.cs);
      this.add(first * image.cs, last - first + 1, type);
    }
  }

  /** Queues a refcount decrement of `count` clusters from host `offset`, freed for `type`. */
  add(offset: number, count: number, type: DiscardType): void {
    this.#queue.push({ first: offset / this.#image.cs, count, type });
  }

  /**
   * Applies queued frees: writes the L2 cache and flushes (so nothing on disk still names the
   * clusters), waits for in-place writes still in flight to them, then lowers the refcounts
   * and discards the freed clusters in the file where the free's type passes discards,
   * adjacent frees merged into one discard (a 256 MiB guest discard was 4096 discards of one
   * cluster). A free stays queued until its
   * refcounts are lowered. Call with `lock` held (no new write can look the clusters up
   * meanwhile).
   */
  async commit(): Promise<void> {
    const image = this.#image;
    if (this.#queue.length === 0) return;
    await image.l2.flush();
    await image.flush();
    const fileRuns: [number, number][] = [];
    const dataRuns: [number, number][] = [];
    while (this.#queue.length > 0) {
      const f = this.#queue[0]!;
      await image.inflight.drain(f.first, f.count);
      if (f.data) {
        // Data file clusters have no refcounts; a raw data file keeps its data.
        this.#queue.shift();
        if (!image.dataRaw && image.passDiscard[f.type]) dataRuns.push([f.first, f.count]);
        continue;
      }
      await image.refcounts.update(f.first, f.count, -1);
      this.#queue.shift();
      if (image.passDiscard[f.type]) fileRuns.push([f.first, f.count]);
    }
    for (const [first, count] of merged(dataRuns)) {
      await image.data.pdiscard(first * image.cs, count * image.cs).catch(() => {});
    }
    await this.discardFreed(fileRuns);
  }

  /**
   * Discards in the file the clusters of `runs` (`[first, count]`, in any order) whose
   * refcount is zero: freed elsewhere (a snapshot's clusters, by `adjustTree`), with their
   * refcounts already stable on disk.
   */
  async discardFreed(runs: [number, number][]): Promise<void> {
    for (const [first, count] of merged(runs)) await this.#discardFreed(first, count);
  }

  /**
   * Discards, a run at a time, the clusters from `first` whose refcount has reached zero. A
   * run freed together may hold clusters that something else still names (an internal
   * snapshot's, next to the freed ones in the file), and those keep their data.
   */
  async #discardFreed(first: number, count: number): Promise<void> {
    const image = this.#image;
    let start = -1;
    for (let c = first; c <= first + count; c++) {
      const free = c < first + count && (await image.refcounts.get(c)) === 0;
      if (free && start < 0) start = c;
      else if (!free && start >= 0) {
        await image.file.pdiscard(start * image.cs, (c - start) * image.cs).catch(() => {});
        start = -1;
      }
    }
  }
}

/** Runs of clusters `[first, count]`, sorted, with adjacent and overlapping ones joined. */
function merged(runs: [number, number][]): [number, number][] {
  runs.sort((a, b) => a[0] - b[0]);
  const out: [number, number][] = [];
  for (const [first, count] of runs) {
    const last = out[out.length - 1];
    if (last && first <= last[0] + last[1]) {
      last[1] = Math.max(last[1], first + count - last[0]);
    } else out.push([first, count]);
  }
  return out;
}
