/**
 * The QMP dirty-bitmap commands as operations on a graph: `block-dirty-bitmap-add`,
 * `-remove`, `-clear`, `-enable`, `-disable` and `-merge`, with QEMU's checks and messages.
 * Each applies at once and, given a {@link Transaction}, registers how to undo itself, so
 * a QMP `transaction` can roll a whole group back. A transaction that awaits between its
 * steps must run in a drained section (QMP's does): writes completing in between would
 * otherwise be lost when a clear or merge is undone.
 *
 * @example
 * ```ts ignore
 * const bitmaps = new DirtyBitmaps(graph);
 * bitmaps.add({ node: "disk0", name: "bm0" });
 * Transaction.run((tran) => {
 *   bitmaps.clear({ node: "disk0", name: "bm0" }, tran);
 *   bitmaps.add({ node: "disk0", name: "bm1", disabled: true }, tran);
 * });
 * ```
 *
 * @module
 */

import { HBitmap } from "./bitmap.ts";
import {
  BitmapCheck,
  bitmapStore,
  createDirtyBitmap,
  defaultBitmapGranularity,
  type DirtyBitmap,
  type DirtyBitmapInfo,
  findDirtyBitmap,
} from "./dirty_bitmap.ts";
import { BlockError } from "./errors.ts";
import type { Graph } from "./graph.ts";
import type { Node } from "./node.ts";
import { Transaction } from "./transaction.ts";

/** Arguments of `block-dirty-bitmap-add`. */
export interface BitmapAddArgs {
  /** Node name or device name. */
  node: string;
  /** The new bitmap's name, unique on the node. */
  name: string;
  /** Bytes per bit: a power of two, at least 512; default from the cluster size. */
  granularity?: number;
  /** Store it in the image (qcow2 only). */
  persistent?: boolean;
  /** Create it disabled. */
  disabled?: boolean;
}

/** Names one bitmap: `{node, name}` (remove, clear, enable, disable). */
export interface BitmapRef {
  /** Node name or device name. */
  node: string;
  /** The bitmap's name. */
  name: string;
}

/** A merge source: a bitmap name on the target's node, or a bitmap on any node. */
export type BitmapSource = string | BitmapRef;

/** Arguments of `block-dirty-bitmap-merge`. */
export interface BitmapMergeArgs {
  /** Node name or device name of the target. */
  node: string;
  /** The target bitmap's name. */
  target: string;
  /** The bitmaps ORed into the target. */
  bitmaps: BitmapSource[];
}

/** The QMP dirty-bitmap commands over one graph. */
export class DirtyBitmaps {
  /** The graph whose nodes the commands name. */
  readonly graph: Graph;

  /** Operates on `graph`. */
  constructor(graph: Graph) {
    this.graph = graph;
  }

  /** The node a QMP `node` argument names: a node name, or a device's root node. */
  findNode(name: string): Node | undefined {
    return this.graph.findNode(name) ?? this.graph.findBackend(name)?.node ?? undefined;
  }

  /** The bitmap `name` on node `node` (QEMU's block_dirty_bitmap_lookup). */
  lookup(node: string, name: string): DirtyBitmap {
    const bs = this.findNode(node);
    if (!bs) throw new BlockError("ENODEV", `Node '${node}' not found`);
    const bm = findDirtyBitmap(bs, name);
    if (!bm) throw new BlockError("ENOENT", `Dirty bitmap '${name}' not found`);
    return bm;
  }

  /** The named bitmaps of `node` as `query-block`'s `dirty-bitmaps` lists them. */
  query(node: Node): DirtyBitmapInfo[] {
    return node.dirtyBitmaps.filter((b) => b.name !== null).map((b) => b.info());
  }

  /** `block-dirty-bitmap-add`; undone by releasing the bitmap. */
  add(args: BitmapAddArgs, tran?: Transaction): DirtyBitmap {
    return step(tran, (t) => {
      if (!args.name) throw new BlockError("EINVAL", "Bitmap name cannot be empty");
      const node = this.findNode(args.node);
      if (!node) {
        throw new BlockError(
          "ENODEV",
          `Cannot find device='${args.node}' nor node-name='${args.node}'`,
        );
      }
      const g = args.granularity;
      if (g !== undefined && (!Number.isInteger(g) || g < 512 || (g & (g - 1)) !== 0)) {
        throw new BlockError("EINVAL", "Granularity must be power of 2 and at least 512");
      }
      const granularity = g ?? defaultBitmapGranularity(node);
      if (args.persistent) {
        const store = bitmapStore(node);
        if (!store?.canStoreDirtyBitmap) {
          throw new BlockError(
            "ENOTSUP",
            `Can't store persistent bitmaps to ${node.name}: Operation not supported`,
          );
        }
        store.canStoreDirtyBitmap(args.name, granularity);
      }
      const bm = createDirtyBitmap(node, granularity, args.name);
      bm.disabled = args.disabled ?? false;
      bm.persistent = args.persistent ?? false;
      t.add({ abort: () => bm.release() });
      return bm;
    });
  }

  /**
   * `block-dirty-bitmap-remove`. A persistent bitmap's stored copy goes at once, as in QEMU:
   * the promise resolves when the image no longer holds it (and the bitmap is released); when
   * the image cannot drop it, the bitmap stays and the promise rejects. In a transaction the
   * bitmap stays listed but busy until the commit releases it (as QEMU's action does), the
   * stored copy going then (or, failing that, at the image's next store); the abort makes it
   * usable again.
   */
  remove(ref: BitmapRef, tran?: Transaction): void | Promise<void> {
    const bm = this.lookup(ref.node, ref.name);
    const err = bm.check(BitmapCheck.BUSY | BitmapCheck.RO);
    if (err) throw err;
    const drop = () =>
      bm.persistent && bm.name !== null
        ? bitmapStore(bm.node)?.dirtyBitmapRemoved?.(bm.name)
        : undefined;
    if (!tran) {
      const dropped = drop();
      if (dropped instanceof Promise) return dropped.then(() => bm.release());
      bm.release();
      return;
    }
    bm.busy = true;
    tran.add({
      commit: () => {
        bm.busy = false;
        // The image retries at its next store what it could not drop now.
        const dropped = drop();
        if (dropped instanceof Promise) dropped.catch(() => {});
        bm.release();
      },
      abort: () => {
        bm.busy = false;
      },
    });
  }

  /** `block-dirty-bitmap-clear`; undone by restoring the old bits. */
  clear(ref: BitmapRef, tran?: Transaction): void {
    const bm = this.lookup(ref.node, ref.name);
    const err = bm.check(BitmapCheck.DEFAULT);
    if (err) throw err;
    if (!tran) return bm.clear();
    const backup = bm.hbitmap;
    bm.hbitmap = new HBitmap(backup.size, backup.granularity);
    tran.add({ abort: () => restore(bm, backup) });
  }

  /** `block-dirty-bitmap-enable`. */
  enable(ref: BitmapRef, tran?: Transaction): void {
    this.#setDisabled(ref, false, tran);
  }

  /** `block-dirty-bitmap-disable`. */
  disable(ref: BitmapRef, tran?: Transaction): void {
    this.#setDisabled(ref, true, tran);
  }

  #setDisabled(ref: BitmapRef, disabled: boolean, tran?: Transaction): void {
    const bm = this.lookup(ref.node, ref.name);
    const err = bm.check(BitmapCheck.ALLOW_RO);
    if (err) throw err;
    const was = bm.disabled;
    bm.disabled = disabled;
    tran?.add({ abort: () => (bm.disabled = was) });
  }

  /**
   * `block-dirty-bitmap-merge`: ORs every source into the target, which is unchanged when
   * any source fails. Sources may sit on other nodes but must cover the same size; their
   * granularity may differ (bits are rounded out to the target's).
   */
  merge(args: BitmapMergeArgs, tran?: Transaction): void {
    const dst = this.lookup(args.node, args.target);
    const acc = new HBitmap(dst.size, dst.granularity);
    for (const s of args.bitmaps) {
      let src: DirtyBitmap;
      if (typeof s === "string") {
        const found = findDirtyBitmap(dst.node, s);
        if (!found) throw new BlockError("ENOENT", `Dirty bitmap '${s}' not found`);
        src = found;
      } else {
        src = this.lookup(s.node, s.name);
      }
      // Each source is looked up, then the target's state checked before the source's
      // (so a busy or inconsistent target is named first, as QEMU 7.2 reports it).
      const err = dst.check(BitmapCheck.DEFAULT) ?? src.check(BitmapCheck.ALLOW_RO);
      if (err) throw err;
      if (src.size !== acc.size) throw sizeMismatch(acc.size, src.size);
      acc.merge(src.hbitmap);
    }
    const err = dst.check(BitmapCheck.DEFAULT);
    if (err) throw err;
    if (tran) {
      const backup = dst.hbitmap.copy();
      tran.add({ abort: () => (dst.hbitmap = backup) });
    }
    dst.hbitmap.merge(acc);
  }
}

function sizeMismatch(dest: number, src: number): BlockError {
  return new BlockError(
    "EINVAL",
    `Bitmaps are of different sizes (destination size is ${dest}, source size is ${src}) ` +
      "and can't be merged",
  );
}

/** Puts back the bits a clear replaced, keeping anything marked since. */
function restore(bm: DirtyBitmap, backup: HBitmap): void {
  if (backup.canMerge(bm.hbitmap)) backup.merge(bm.hbitmap);
  bm.hbitmap = backup;
}

/** Runs `fn` in `tran`, or in a transaction of its own that commits when it returns. */
function step<T>(tran: Transaction | undefined, fn: (t: Transaction) => T): T {
  return tran ? fn(tran) : Transaction.run(fn);
}
