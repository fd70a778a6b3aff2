/**
 * Whether an image looks preallocated with `preallocation=metadata` (QEMU's
 * `qcow2_detect_metadata_preallocation`): clearly more clusters have a refcount than the image
 * file has allocated on its file system. Such an image maps its whole disk to host clusters
 * that are mostly holes, so block status then asks the file too (RECURSE) and reports the holes
 * as zeros, as QEMU does.
 *
 * @module
 */

import { type BlockStatus, BlockStatusFlags } from "@blockgraph/core";
import type { Qcow2Image } from "./image.ts";

/**
 * An open image's answer to "does it look metadata-preallocated?", found once, at the first
 * block status (as QEMU's `metadata_preallocation_checked`), and what it does to block status.
 */
export class MetadataPreallocation {
  readonly #image: Qcow2Image;
  #known: boolean | undefined;
  /** The detection under way: requests that come meanwhile wait for the same one. */
  #detecting: Promise<boolean> | null = null;

  /** Not yet known for `image`. */
  constructor(image: Qcow2Image) {
    this.#image = image;
  }

  /** The answer once found, else undefined: {@link MetadataPreallocation.detect} first. */
  get known(): boolean | undefined {
    return this.#known;
  }

  /** Finds the answer under the image's lock (once; later callers share it). */
  detect(): Promise<boolean> {
    const image = this.#image;
    return this.#detecting ??= image.lock.run(() => detectMetadataPreallocation(image)).then(
      (p) => (this.#known = p),
    );
  }

  /**
   * `st` with RECURSE added when the image looks preallocated and `st` is data mapped into
   * the file: the generic layer then asks the file whether it is a hole there.
   */
  mark(st: BlockStatus): BlockStatus {
    const F = BlockStatusFlags;
    if (this.#known && (st.status & (F.DATA | F.OFFSET_VALID)) === (F.DATA | F.OFFSET_VALID)) {
      st.status |= F.RECURSE;
    }
    return st;
  }
}

/**
 * True when at least `max(n × 10/9, n + 2)` clusters of the image file have a nonzero
 * refcount, `n` being the whole clusters the file occupies on its file system. Call under the
 * image's lock; a failure reads as false (it only refines block status).
 */
export async function detectMetadataPreallocation(image: Qcow2Image): Promise<boolean> {
  try {
    const cs = image.cs;
    const file = image.file;
    const allocated = await file.instance?.allocatedSize?.() ?? file.getLength();
    const real = Math.floor(allocated / cs);
    const threshold = Math.max(Math.floor((real * 10) / 9), real + 2);
    const end = Math.ceil(file.getLength() / cs);
    let count = 0;
    for (let c = 0; c < end && count < threshold; c++) {
      const r = image.refcounts.peek(c) ?? await image.refcounts.get(c);
      if (r !== 0) count++;
    }
    return count >= threshold;
  } catch {
    return false;
  }
}
