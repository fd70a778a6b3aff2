/**
 * `img convert --bitmaps [--skip-broken-bitmaps]`: qemu-img 7.2 copies the source's
 * persistent bitmaps into the target after the data, each as a new persistent bitmap of the
 * same granularity and state filled by a merge (the daemon's `block-dirty-bitmap-add` and
 * `-merge`, through core's {@link DirtyBitmaps}). Inconsistent bitmaps stop the convert
 * before the target is created, or are skipped with a warning.
 *
 * QEMU walks a node's bitmaps newest first (its list grows at the head), so the checks,
 * warnings and additions here do too and name the bitmap qemu-img names. The target's list
 * then holds them oldest first, and its driver stores new bitmaps newest first (as QEMU's
 * qcow2 does), so the target's directory keeps the source's order.
 *
 * @module
 */

import {
  BlockError,
  type DirtyBitmap,
  DirtyBitmaps,
  type Graph,
  type Node,
} from "@blockgraph/core";
import type { CliIo } from "../common/cli_io.ts";
import { supportsPersistentBitmaps } from "./image_facts.ts";
import { imgError } from "./img_common.ts";

/** The persistent bitmaps of `node` in QEMU's order (newest first). */
function persistentBitmaps(node: Node): DirtyBitmap[] {
  return node.dirtyBitmaps.filter((b) => b.persistent && b.name !== null).reverse();
}

/**
 * Before the target is created (QEMU's convert_check_bitmaps): the source must store
 * bitmaps, and without `skipBroken` none may be inconsistent. Prints why not; returns false.
 */
export function checkSourceBitmaps(io: CliIo, src: Node, skipBroken: boolean): boolean {
  if (!supportsPersistentBitmaps(src)) {
    imgError(io, "Source lacks bitmap support");
    return false;
  }
  if (skipBroken) return true;
  const broken = persistentBitmaps(src).find((b) => b.inconsistent);
  if (broken) {
    imgError(io, `Cannot copy inconsistent bitmap '${broken.name}'`);
    io.err("Try --skip-broken-bitmaps, or use 'qemu-img bitmap --remove' to delete it\n");
    return false;
  }
  return true;
}

/**
 * After the data (QEMU's convert_copy_bitmaps): each persistent bitmap of `src` is added to
 * `dst` with its granularity and enabled state and filled from the source. A bitmap that
 * cannot be filled is removed again. Prints the failure and returns false.
 */
export function copyBitmaps(
  graph: Graph,
  io: CliIo,
  src: Node,
  dst: Node,
  skipBroken: boolean,
): boolean {
  const bitmaps = new DirtyBitmaps(graph);
  for (const bm of persistentBitmaps(src)) {
    if (skipBroken && bm.inconsistent) {
      io.err(`qemu-img: warning: Skipping inconsistent bitmap '${bm.name}'\n`);
      continue;
    }
    const name = bm.name!;
    try {
      bitmaps.add({
        node: dst.name,
        name,
        granularity: bm.granularity,
        persistent: true,
        disabled: !bm.enabled,
      });
    } catch (e) {
      imgError(io, `Failed to create bitmap ${name}: ${BlockError.from(e).message}`);
      return false;
    }
    try {
      bitmaps.merge({ node: dst.name, target: name, bitmaps: [{ node: src.name, name }] });
    } catch (e) {
      imgError(io, `Failed to populate bitmap ${name}: ${BlockError.from(e).message}`);
      try {
        // Added in this run, so never stored: nothing on disk to wait for.
        const removed = bitmaps.remove({ node: dst.name, name });
        if (removed instanceof Promise) removed.catch(() => {});
      } catch {
        // QEMU ignores a failed cleanup too.
      }
      return false;
    }
  }
  return true;
}
