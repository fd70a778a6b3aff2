/**
 * Reopening a qcow2 node between read-only and read-write (blockdev-reopen, commit jobs,
 * qemu-io's reopen): read-only first writes everything back and marks the image clean;
 * read-write refuses corrupt or dirty images, and before the first write marks the loaded
 * bitmaps in use (bitmaps.ts) — the file may only become writable in the same reopen, so
 * that write cannot happen while preparing.
 *
 * @module
 */

import { BlockError, type Node, type OptionValues, type ReopenHandle } from "@blockgraph/core";
import { reopenBitmapsRo } from "./bitmaps.ts";
import { Incompat } from "./format.ts";
import type { Qcow2Image } from "./image.ts";
import { Overlap, readRuntimeOptions } from "./runtime_options.ts";
import { inactiveL2Clusters } from "./snapshot.ts";

/**
 * A reopen of the qcow2 node `node` (QEMU's `qcow2_reopen_prepare`): the runtime options
 * (runtime_options.ts; left out: their defaults) are checked first, the caches are written
 * back and turning lazy refcounts off marks the image clean, a change to read-only stores the
 * bitmaps first (bitmaps.ts), then {@link prepareReopen} changes the mode. The options apply
 * when the reopen commits. `idle` runs a function once no write is in flight, under the
 * metadata lock.
 */
export async function reopenQcow2(
  image: Qcow2Image,
  node: Node,
  options: OptionValues,
  readOnly: boolean,
  idle: <T>(fn: () => Promise<T>) => Promise<T>,
): Promise<ReopenHandle> {
  const read = () =>
    readRuntimeOptions(
      options,
      image.header,
      image.file.getLength(),
      node.flags.discard === "unmap",
    );
  const runtime = read();
  if (image.writable && !image.broken) {
    await idle(async () => {
      await image.flushCaches();
      if (image.lazy && !runtime.lazyRefcounts) await image.markClean();
    });
  }
  let bitmapsRo = () => {};
  if (readOnly && image.writable && !image.broken) {
    bitmapsRo = await idle(() => reopenBitmapsRo(image, node));
  }
  const handle = await prepareReopen(image, readOnly, idle);
  // The snapshots' L2 tables, read now if the new options check them.
  const inactiveL2 = (runtime.overlapCheck & Overlap.INACTIVE_L2) !== 0
    ? await idle(() => inactiveL2Clusters(image, runtime.overlapCheck))
    : [];
  return {
    commit: () => {
      handle.commit();
      bitmapsRo();
      // Read again: the node's new discard mode is the default of pass-discard-request.
      image.applyOptions(read());
      image.map.setInactiveL2(inactiveL2);
    },
    abort: () => handle.abort(),
  };
}

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
