/**
 * Dirty bitmaps on a node (QEMU's BdrvDirtyBitmap): a named {@link HBitmap} that the
 * node's request layer marks as writes, write-zeroes and discards complete, with the
 * states QMP exposes (enabled, busy, persistent, inconsistent, readonly) and the
 * successor protocol backup jobs use. The QMP-style operations are in `dirty_bitmaps.ts`.
 *
 * @module
 */

import { HBitmap } from "./bitmap.ts";
import type { DriverInstance } from "./driver.ts";
import { BlockError } from "./errors.ts";
import type { Node } from "./node.ts";

/** QEMU's BDRV_BITMAP_MAX_NAME_SIZE. */
export const MAX_BITMAP_NAME = 1023;

/**
 * What a format that stores bitmaps in its image (qcow2) offers, on its driver instance.
 * Every member is optional; a driver without them cannot hold persistent bitmaps.
 */
export interface DirtyBitmapStore {
  /** The cluster size, from which the default granularity is taken. */
  readonly clusterSize?: number;
  /** Throws when a new persistent bitmap `name` of `granularity` could not be stored. */
  canStoreDirtyBitmap?(name: string, granularity: number): void;
  /**
   * A persistent bitmap was removed: the image drops its stored copy now (as QEMU does at
   * `block-dirty-bitmap-remove`), and resolves when it is gone. When that fails the copy is
   * dropped at the next store.
   */
  dirtyBitmapRemoved?(name: string): void | Promise<void>;
}

/** Which states {@link DirtyBitmap.check} refuses (QEMU's BDRV_BITMAP_* flags). */
export const BitmapCheck = {
  /** In use by a job or an export. */
  BUSY: 1,
  /** Read-only (loaded from a read-only image). */
  RO: 2,
  /** Persistent but not saved cleanly: it can only be removed. */
  INCONSISTENT: 4,
  /** Every state: for operations that change the bits. */
  DEFAULT: 7,
  /** Every state but read-only: for enable and disable. */
  ALLOW_RO: 5,
} as const;

/** One bitmap as `query-block` lists it (QEMU's BlockDirtyInfo). */
export interface DirtyBitmapInfo {
  /** The name; absent for anonymous bitmaps. */
  name?: string;
  /** Dirty bytes. */
  count: number;
  /** Bytes per bit. */
  granularity: number;
  /** Whether writes are recorded (enabled, or an enabled successor). */
  recording: boolean;
  /** In use by an operation. */
  busy: boolean;
  /** Stored in the image. */
  persistent: boolean;
  /** Present (true) only when the bitmap is inconsistent. */
  inconsistent?: boolean;
}

/**
 * A dirty bitmap attached to a node. Created by {@link createDirtyBitmap} (or the QMP-style
 * `DirtyBitmaps.add`); listed in `node.dirtyBitmaps`.
 */
export class DirtyBitmap {
  /** The node whose writes this bitmap records. */
  readonly node: Node;
  /** The name, unique on the node; `null` for anonymous bitmaps (successors, scratch). */
  name: string | null;
  /** The bits. Replaced wholesale when a transaction restores a backup. */
  hbitmap: HBitmap;
  /** Disabled bitmaps ignore writes (but clear and merge still change them). */
  disabled = false;
  /** In use by a job or export: QMP may not touch it. */
  busy = false;
  /** Stored in the image (qcow2) at close or inactivation. */
  persistent = false;
  /** Persistent but found in use when loaded: it can only be removed. */
  inconsistent = false;
  /** Loaded from a read-only image: neither the bitmap nor the image may change. */
  readonly = false;
  /** The anonymous bitmap recording writes while a job holds this one. */
  successor: DirtyBitmap | null = null;

  /** Use {@link createDirtyBitmap}. */
  constructor(node: Node, name: string | null, hbitmap: HBitmap) {
    this.node = node;
    this.name = name;
    this.hbitmap = hbitmap;
  }

  /** Bytes per bit. */
  get granularity(): number {
    return this.hbitmap.granularity;
  }

  /** The byte size covered (the node's length when it was last resized). */
  get size(): number {
    return this.hbitmap.size;
  }

  /** Dirty bytes. */
  get count(): number {
    return this.hbitmap.count;
  }

  /** Whether writes mark it. */
  get enabled(): boolean {
    return !this.disabled;
  }

  /** Whether writes are recorded, by this bitmap or its successor. */
  get recording(): boolean {
    return !this.disabled || (this.successor !== null && !this.successor.disabled);
  }

  /** Whether the node still lists it. */
  get attached(): boolean {
    return this.node.dirtyBitmaps.includes(this);
  }

  /** The error QMP gives for a bitmap in a state `flags` refuses, or null. */
  check(flags: number): BlockError | null {
    const name = this.name ?? "";
    if ((flags & BitmapCheck.BUSY) && this.busy) {
      return new BlockError(
        "EBUSY",
        `Bitmap '${name}' is currently in use by another operation and cannot be used`,
      );
    }
    if ((flags & BitmapCheck.RO) && this.readonly) {
      return new BlockError("EPERM", `Bitmap '${name}' is readonly and cannot be modified`);
    }
    if ((flags & BitmapCheck.INCONSISTENT) && this.inconsistent) {
      return new BlockError("EINVAL", `Bitmap '${name}' is inconsistent and cannot be used`, {
        hint: "Try block-dirty-bitmap-remove to delete this bitmap from disk\n",
      });
    }
    return null;
  }

  /** Marks a range dirty, whatever the enabled state (jobs and merges use it). */
  set(offset: number, bytes: number): void {
    this.hbitmap.set(offset, bytes);
  }

  /** Clears a granularity-aligned range. */
  reset(offset: number, bytes: number): void {
    this.hbitmap.reset(offset, bytes);
  }

  /** Clears every bit. */
  clear(): void {
    this.hbitmap.resetAll();
  }

  /** The `query-block` description. */
  info(): DirtyBitmapInfo {
    const info: DirtyBitmapInfo = {
      count: this.count,
      granularity: this.granularity,
      recording: this.recording,
      busy: this.busy,
      persistent: this.persistent,
    };
    if (this.name !== null) info.name = this.name;
    if (this.inconsistent) info.inconsistent = true;
    return info;
  }

  /** Detaches the bitmap from its node; writes stop marking it. */
  release(): void {
    const list = this.node.dirtyBitmaps;
    const i = list.indexOf(this);
    if (i >= 0) list.splice(i, 1);
  }

  /**
   * Hands the bitmap to an operation (QEMU's create_successor): an anonymous successor
   * takes over recording writes and this bitmap becomes busy and disabled.
   */
  createSuccessor(): DirtyBitmap {
    if (this.busy) {
      throw new BlockError(
        "EBUSY",
        "Cannot create a successor for a bitmap that is in-use by an operation",
      );
    }
    if (this.successor) {
      throw new BlockError("EBUSY", "Cannot create a successor for a bitmap that already has one");
    }
    const child = createDirtyBitmap(this.node, this.granularity, null);
    child.disabled = this.disabled;
    this.disabled = true;
    this.successor = child;
    this.busy = true;
    return child;
  }

  /**
   * The operation succeeded (QEMU's abdicate): the successor takes this bitmap's name and
   * persistence and this one is released.
   */
  abdicate(): DirtyBitmap {
    const s = this.#takeSuccessor("Cannot relinquish control if there's no successor present");
    s.name = this.name;
    s.persistent = this.persistent;
    this.name = null;
    this.persistent = false;
    this.release();
    return s;
  }

  /**
   * The operation failed (QEMU's reclaim): the successor's bits are merged back and this
   * bitmap records again if the successor did.
   */
  reclaim(): DirtyBitmap {
    const s = this.#takeSuccessor("Cannot reclaim a successor when none is present");
    this.hbitmap.merge(s.hbitmap);
    this.disabled = s.disabled;
    s.release();
    return this;
  }

  #takeSuccessor(message: string): DirtyBitmap {
    const s = this.successor;
    if (!s) throw new BlockError("EINVAL", message);
    this.successor = null;
    this.busy = false;
    return s;
  }
}

/** The store hooks of `node`'s driver instance, if it has any. */
export function bitmapStore(node: Node): (DriverInstance & DirtyBitmapStore) | null {
  return node.instance as (DriverInstance & DirtyBitmapStore) | null;
}

/**
 * QEMU's default granularity: the cluster size clamped to [4 KiB, 64 KiB], or 64 KiB when
 * the driver has no clusters.
 */
export function defaultBitmapGranularity(node: Node): number {
  const cs = bitmapStore(node)?.clusterSize ?? 0;
  return cs > 0 ? Math.min(65536, Math.max(4096, cs)) : 65536;
}

/** The bitmap called `name` on `node`, or undefined. */
export function findDirtyBitmap(node: Node, name: string): DirtyBitmap | undefined {
  return node.dirtyBitmaps.find((b) => b.name === name);
}

/**
 * Creates an enabled bitmap over `node`'s current length and attaches it (QEMU's
 * bdrv_create_dirty_bitmap). `name` null makes an anonymous bitmap.
 */
export function createDirtyBitmap(
  node: Node,
  granularity: number,
  name: string | null,
): DirtyBitmap {
  if (!Number.isInteger(granularity) || granularity < 512 || (granularity & (granularity - 1))) {
    throw new BlockError("EINVAL", "Granularity must be power of 2 and at least 512");
  }
  if (name !== null) {
    if (name.length > MAX_BITMAP_NAME) {
      throw new BlockError("EINVAL", `Bitmap name too long: ${name}`);
    }
    if (findDirtyBitmap(node, name)) {
      throw new BlockError("EEXIST", `Bitmap already exists: ${name}`);
    }
  }
  let hb: HBitmap;
  try {
    hb = new HBitmap(node.getLength(), granularity);
  } catch (e) {
    if (e instanceof BlockError) throw e;
    throw new BlockError("EINVAL", (e as Error).message, { node: node.name });
  }
  const bm = new DirtyBitmap(node, name, hb);
  node.dirtyBitmaps.push(bm);
  return bm;
}

/**
 * The request layer's hook: a write, write-zeroes or discard of `[offset, offset+bytes)`
 * completed (or failed, which may have changed data too), so every enabled bitmap marks
 * it. A write past a bitmap's end (a protocol node grew) resizes every bitmap first.
 */
export function markDirty(node: Node, offset: number, bytes: number): void {
  const list = node.dirtyBitmaps;
  let end = offset + bytes;
  for (let i = 0; i < list.length; i++) {
    const bm = list[i]!;
    if (bm.disabled) continue;
    if (end > bm.size) {
      resizeDirtyBitmaps(node, Math.max(end, node.instance?.getLength() ?? 0));
      end = Math.min(end, bm.size);
    }
    if (end > offset) bm.hbitmap.set(offset, end - offset);
  }
}

/**
 * Resizes every bitmap of `node` to `size` bytes after a truncate. Shrinking drops the
 * bits past the end; growing marks the new tail dirty in enabled bitmaps, since what it
 * reads now (zeros) is not what a copy taken before may hold there (QEMU leaves it clean).
 */
export function resizeDirtyBitmaps(node: Node, size: number): void {
  for (const bm of node.dirtyBitmaps) {
    const old = bm.size;
    if (old === size) continue;
    bm.hbitmap.truncate(size);
    if (size > old && !bm.disabled) bm.hbitmap.set(old, size - old);
  }
}
