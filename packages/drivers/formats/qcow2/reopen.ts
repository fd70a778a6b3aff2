/**
 * Reopening a qcow2 node between read-only and read-write (blockdev-reopen, commit jobs,
 * qemu-io's reopen): read-only first writes everything back and marks the image clean;
 * read-write refuses corrupt or dirty images, and before the first write marks the loaded
 * bitmaps in use (bitmaps.ts) — the file may only become writable in the same reopen, so
 * that write cannot happen while preparing.
 *
 * @module
 */

import { BlockError, type ReopenHandle } from "@blockgraph/core";
import { Incompat } from "./format.ts";
import type { Qcow2Image } from "./image.ts";

/**
 * Prepares a change of `image` to `readOnly`. `idle` runs a function once no write is in
 * flight, under the metadata lock.
 */
export async function prepareReopen(
  image: Qcow2Image,
  readOnly: boolean,
  idle: (fn: () => Promise<void>) => Promise<void>,
): Promise<ReopenHandle> {
  if (readOnly === !image.writable) return { commit() {}, abort() {} };
  const h = image.header;
  if (readOnly) {
    await idle(async () => {
      await image.flushCaches();
      await image.flush();
      if (image.lazy) await image.markClean();
    });
    return {
      commit: () => {
        image.writable = false;
        image.lazy = false;
        image.autoclearPending = false;
      },
      abort() {},
    };
  }
  if (h.incompatible & BigInt(Incompat.CORRUPT)) {
    throw new BlockError("EACCES", "qcow2: Image is corrupt; cannot be opened read/write");
  }
  if (h.incompatible & BigInt(Incompat.DIRTY)) {
    throw new BlockError(
      "EACCES",
      "qcow2: Image is dirty (its refcounts need a repair); reopen it read/write after " +
        "'check -r all', or open it read/write anew, which repairs it",
    );
  }
  return {
    commit: () => {
      image.writable = true;
      image.lazy = image.useLazy;
      image.autoclearPending = h.version >= 3 && h.autoclear !== 0n;
    },
    abort() {},
  };
}
