/**
 * An open qcow2 node: the guest I/O paths over a {@link Qcow2Image}. Reads map extents and
 * read data, zeros, the backing file or decompressed clusters; writes go in place to COPIED
 * clusters and otherwise allocate, copying the untouched head and tail of the first and last
 * cluster from wherever they read before (backing file, zeros, a shared or compressed
 * cluster). With extended L2 entries, writes, write-zeroes and discard go through
 * subcluster_write.ts and subcluster_ops.ts; with an external data file, guest data is read
 * and written there (`image.data`).
 *
 * @module
 */

import {
  BlockError,
  type BlockLimits,
  type BlockStatus,
  type DirtyBitmapStore,
  type DriverInstance,
  type FormatSpecificInfo,
  HOST_READ_DECLINED,
  type HostReadSink,
  IoVector,
  isZeroAbove,
  type Node,
  type OptionValues,
  type PreallocMode,
  type ReopenHandle,
  ReqFlags,
  strerror,
} from "@blockgraph/core";
import { CRYPT_SECTOR } from "../../crypto/sector_cipher.ts";
import { checkEncryptedIo, readDecrypted } from "./encryption.ts";

import { amendImage, type AmendProgress, changeBackingFile } from "./amend.ts";
import { checkImage } from "./check.ts";
import type { Qcow2CheckResult } from "./check_result.ts";
import { writeCompressed } from "./compressed_write.ts";
import { cachedDataOffset, contiguousDataOffset } from "./read_fast_path.ts";
import { compressedWithDataFile, extentStatus } from "./extent_status.ts";
import { decompressExtent } from "./allocating_write.ts";
import { clusterWriteStep } from "./cluster_write.ts";
import { discardClusters, zeroClusters, zeroWholeCluster } from "./cluster_ops.ts";
import { qcow2FormatInfo } from "./format_info.ts";
import { discardSubclusters, zeroSubclusters } from "./subcluster_ops.ts";
import { subclusterWriteStep } from "./subcluster_write.ts";
import type { Extent } from "./extent.ts";
import { type Qcow2Image, vmStateOffset } from "./image.ts";
import {
  bitmapRemoved,
  canStoreBitmap,
  reopenBitmapsRw,
  storeBitmapsAtClose,
  truncateBitmapsCheck,
} from "./bitmaps.ts";
import { whenIdle } from "./locks.ts";
import { makeEmptyImage } from "./make_empty.ts";
import { MetadataPreallocation } from "./metadata_prealloc.ts";
import { reopenQcow2 } from "./reopen.ts";
import { growL1, truncateImage } from "./resize.ts";
import {
  applySnapshot,
  createSnapshot,
  deleteSnapshot,
  loadSnapshotTemporarily,
} from "./snapshot.ts";
import { type Qcow2Snapshot, snapshotInfo } from "./snapshot_table.ts";

/** QEMU's answer to internal snapshots with an external data file (-ENOTSUP). */
function noSnapshots(): BlockError {
  return new BlockError("ENOTSUP", "-95 (Operation not supported)");
}

/** An open qcow2 node. */
export class Qcow2Instance implements DriverInstance, DirtyBitmapStore {
  /** The image state. */
  readonly image: Qcow2Image;
  /** Byte-granular requests; write-zeroes and discard work on whole clusters. */
  readonly limits: Partial<BlockLimits>;
  /** MAY_UNMAP is handled (clusters are freed). */
  readonly supportedZeroFlags: number = ReqFlags.MAY_UNMAP;

  /** Compressed writes (`qemu-io write -c`), except with an external data file. */
  readonly supportedWriteFlags: number;
  readonly #node: Node;
  /** Whether the image looks metadata-preallocated: then data answers ask the file too. */
  readonly #prealloc: MetadataPreallocation;

  /** Wraps an opened image for `node`. */
  constructor(node: Node, image: Qcow2Image) {
    this.#node = node;
    this.image = image;
    this.#prealloc = new MetadataPreallocation(image);
    this.limits = { pwriteZeroesAlignment: image.sc, pdiscardAlignment: image.cs };
    // Encrypted data is read in whole sectors of the cipher (QEMU's request_alignment).
    if (image.crypto) this.limits = { ...this.limits, requestAlignment: CRYPT_SECTOR };
    this.supportedWriteFlags = image.external ? 0 : ReqFlags.WRITE_COMPRESSED;
  }

  #backing(): Node | null {
    return this.#node.backing?.node ?? null;
  }

  /** The virtual disk size. */
  getLength(): number {
    return this.image.header.size;
  }

  #check(offset: number, bytes: number, write: boolean): void {
    if (this.image.broken) throw this.image.brokenError();
    if (this.image.encryption) checkEncryptedIo(this.image.crypto, false, offset);
    const size = this.image.header.size;
    if (offset > size || bytes > size - offset) {
      throw new BlockError(
        write ? "ENOSPC" : "EIO",
        `Request at offset ${offset} (${bytes} bytes) is outside the ${size}-byte qcow2 image`,
        { offset },
      );
    }
  }

  /**
   * Reads guest data. A request inside one data cluster whose L2 table is cached goes straight
   * to the data file, with no async frame or extent of its own (most random reads of an
   * allocated image).
   */
  preadv(offset: number, bytes: number, qiov: IoVector, qiovOffset: number): Promise<void> {
    try {
      this.#check(offset, bytes, false);
    } catch (e) {
      return Promise.reject(e);
    }
    const host = this.image.crypto ? -1 : cachedDataOffset(this.image, offset, bytes);
    if (host >= 0) return this.image.data.preadv(host, bytes, qiov, qiovOffset);
    return this.#preadvExtents(offset, bytes, qiov, qiovOffset);
  }

  /**
   * Serves a read as one range of the data file, where the data file can (a cached `file`:
   * `sendfile` replies of the NBD server): when every cluster of the range holds data at
   * consecutive host offsets, with its L2 table cached. Anything else (unallocated, zero or
   * compressed clusters, extended L2 entries, a gap between clusters, a broken image):
   * false, and the caller reads with `preadv`.
   */
  preadHost(offset: number, bytes: number, sink: HostReadSink): Promise<boolean> {
    const size = this.image.header.size;
    if (this.image.broken || this.image.crypto || offset > size || bytes > size - offset) {
      return HOST_READ_DECLINED;
    }
    const host = contiguousDataOffset(this.image, offset, bytes);
    if (host < 0) return HOST_READ_DECLINED;
    return this.image.data.preadHost(host, bytes, sink);
  }

  async #preadvExtents(
    offset: number,
    bytes: number,
    qiov: IoVector,
    qiovOffset: number,
  ): Promise<void> {
    const image = this.image;
    while (bytes > 0) {
      const ext = image.lookupCached(offset, bytes) ??
        await image.lock.run(() => image.lookup(offset, bytes));
      await this.#readExtent(ext, offset, ext.bytes, qiov, qiovOffset);
      offset += ext.bytes;
      qiovOffset += ext.bytes;
      bytes -= ext.bytes;
    }
  }

  /** Reads `bytes` of `ext` (which starts at guest `offset`) into `qiov`. */
  async #readExtent(
    ext: Extent,
    offset: number,
    bytes: number,
    qiov: IoVector,
    qiovOffset: number,
  ): Promise<void> {
    switch (ext.kind) {
      case "normal":
        if (this.image.crypto) {
          await readDecrypted(
            this.image.data,
            this.image.crypto,
            ext.host,
            offset,
            bytes,
            qiov,
            qiovOffset,
          );
        } else {
          await this.image.data.preadv(ext.host, bytes, qiov, qiovOffset);
        }
        return;
      case "zero":
      case "zero-alloc":
        qiov.fill(qiovOffset, bytes, 0);
        return;
      case "compressed": {
        if (this.image.external) throw compressedWithDataFile(this.image, offset);
        const data = await decompressExtent(this.image, ext);
        qiov.copyFrom(qiovOffset, data, offset % this.image.cs, bytes);
        return;
      }
      case "unallocated":
      case "unallocated-alloc": {
        const backing = this.#backing();
        if (!backing) {
          qiov.fill(qiovOffset, bytes, 0);
          return;
        }
        await backing.preadv(offset, bytes, qiov, qiovOffset);
      }
    }
  }

  /** Writes guest data, allocating clusters where needed. */
  async pwritev(
    offset: number,
    bytes: number,
    qiov: IoVector,
    qiovOffset: number,
    flags = 0,
  ): Promise<void> {
    this.#check(offset, bytes, true);
    if (this.image.autoclearPending) await this.#clearAutoclear();
    if (flags & ReqFlags.WRITE_COMPRESSED) {
      if (this.image.encryption) checkEncryptedIo(this.image.crypto, true, offset);
      if (this.image.external) {
        throw new BlockError(
          "ENOTSUP",
          "Compressed writes are not supported with an external data file",
          { offset },
        );
      }
      return writeCompressed(
        this.image,
        offset,
        bytes,
        qiov,
        qiovOffset,
        (o, n, q) => this.pwritev(o, n, qiov, q),
      );
    }
    await this.#writeLoop(offset, bytes, qiov, qiovOffset);
  }

  async #writeLoop(offset: number, bytes: number, qiov: IoVector, qiovOffset: number) {
    const ext = this.image.extL2;
    while (bytes > 0) {
      const n = ext
        ? await subclusterWriteStep(this.image, this.#backing(), offset, bytes, qiov, qiovOffset)
        : await clusterWriteStep(this.image, this.#backing(), offset, bytes, qiov, qiovOffset);
      offset += n;
      qiovOffset += n;
      bytes -= n;
    }
  }

  /**
   * Reads the VM state area (QEMU's `qcow2_co_load_vmstate`): the clusters after the virtual
   * disk, from {@link vmStateOffset}, mapped by L1 entries past the disk's; what was never
   * written reads as zeros.
   */
  loadVmState(pos: number, bytes: number, qiov: IoVector, qiovOffset: number): Promise<void> {
    if (this.image.broken) return Promise.reject(this.image.brokenError());
    return this.#preadvExtents(vmStateOffset(this.image) + pos, bytes, qiov, qiovOffset);
  }

  /**
   * Writes the VM state area (QEMU's `qcow2_co_save_vmstate`), allocating as guest writes
   * do; the L1 table grows first when the area reaches past it.
   */
  async saveVmState(pos: number, bytes: number, qiov: IoVector, qiovOffset: number) {
    const image = this.image;
    if (image.broken) throw image.brokenError();
    if (!image.writable) throw new BlockError("EACCES", "Image is read-only");
    if (image.external) {
      throw new BlockError("ENOTSUP", "No VM state area with an external data file");
    }
    if (image.autoclearPending) await this.#clearAutoclear();
    const offset = vmStateOffset(image) + pos;
    const entries = Math.ceil((offset + bytes) / (image.cs * image.l2Entries));
    if (entries > image.l1.length) {
      await this.#idle(() =>
        entries > image.l1.length ? growL1(image, entries) : Promise.resolve()
      );
    }
    await this.#writeLoop(offset, bytes, qiov, qiovOffset);
  }

  /**
   * Makes whole clusters read as zeros: on version 3 with the zero flag, unallocated clusters
   * too (QEMU's `zero_in_l2_slice`: only a plain zero cluster, or a preallocated one kept
   * without MAY_UNMAP, is left as it is), and COPIED clusters stay preallocated zero clusters
   * unless MAY_UNMAP frees them. Version 2 has no zero flag: without a backing file the
   * clusters are discarded (they read as zeros unallocated), with one ENOTSUP (the generic
   * layer writes zero buffers), as QEMU's `qcow2_subcluster_zeroize`. Part of one cluster:
   * the whole cluster is zeroed when the rest of it reads as zeros already and it holds no
   * data (unallocated or a zero cluster), as QEMU's `qcow2_co_pwrite_zeroes`; otherwise
   * ENOTSUP (the generic layer writes zeros there). With extended L2 entries the same is done
   * per subcluster by subcluster_ops.ts, except that part of a subcluster is always ENOTSUP
   * (QEMU asks `is_zero` there too).
   */
  async pwriteZeroes(offset: number, bytes: number, flags: number): Promise<void> {
    this.#check(offset, bytes, true);
    if (this.image.autoclearPending) await this.#clearAutoclear();
    const image = this.image;
    const cs = image.cs;
    const end = offset + bytes;
    if (image.extL2) return zeroSubclusters(image, offset, end, flags);
    if (offset % cs !== 0 || (end % cs !== 0 && end !== image.header.size)) {
      const start = Math.floor(offset / cs) * cs;
      const clusterEnd = Math.min(start + cs, image.header.size);
      const node = this.#node;
      if (
        end > clusterEnd || image.dataRaw ||
        (image.header.version < 3 && this.#backing() !== null) ||
        !(await isZeroAbove(node, start, offset - start) &&
          await isZeroAbove(node, end, clusterEnd - end))
      ) {
        throw new BlockError("ENOTSUP", "qcow2 zeroes whole clusters only");
      }
      // The rest of the cluster reads as zeros (this layer and all below): the cluster may
      // become a zero cluster if this layer holds no data in it (checked again under the
      // metadata lock: a write may have come meanwhile).
      return zeroWholeCluster(image, start, clusterEnd, flags);
    }
    // Version 2 has no zero flag: without a backing file, discarded clusters read as zeros.
    if (image.header.version < 3 && this.#backing() === null) return this.pdiscard(offset, bytes);
    await zeroClusters(image, offset, end, flags);
  }

  /**
   * Discards whole clusters: frees what they hold, and they read as zeros afterwards, as
   * QEMU's `discard_in_l2_slice` (not a full discard): on version 3 a discarded cluster
   * becomes a zero cluster when it was allocated or a backing file is below (so an
   * unallocated cluster over a backing file reads zeros too, not the backing data); on
   * version 2, which has no zero flag, allocated clusters become unallocated. Unallocated and
   * zero clusters without a backing file stay as they are. A version 2 image with a backing
   * file refuses (ENOTSUP, which the block layer takes as done), as its clusters would show
   * the backing data again.
   */
  async pdiscard(offset: number, bytes: number): Promise<void> {
    this.#check(offset, bytes, true);
    if (this.image.autoclearPending) await this.#clearAutoclear();
    const image = this.image;
    const cs = image.cs;
    const start = Math.ceil(offset / cs) * cs;
    const end = offset + bytes === image.header.size
      ? offset + bytes
      : Math.floor((offset + bytes) / cs) * cs;
    if (end <= start) return;
    // A raw data file keeps its 1:1 mapping: the range is zeroed there and reads as zeros.
    if (image.dataRaw) return this.pwriteZeroes(start, end - start, ReqFlags.MAY_UNMAP);
    const backed = this.#backing() !== null;
    if (image.extL2) return discardSubclusters(image, start, end, backed);
    if (image.header.version < 3 && backed) {
      throw new BlockError("ENOTSUP", "qcow2 version 2 images with a backing file cannot discard");
    }
    await discardClusters(image, start, end, backed);
  }

  /** What this layer holds at `offset`: data (mapped into the file), zeros, or nothing. */
  blockStatus(
    _wantZero: boolean,
    offset: number,
    bytes: number,
  ): BlockStatus | Promise<BlockStatus> {
    if (this.image.broken) throw this.image.brokenError();
    const image = this.image;
    const prealloc = this.#prealloc;
    if (prealloc.known === undefined) {
      return prealloc.detect().then(() => this.blockStatus(_wantZero, offset, bytes));
    }
    // A cached table answers at once and without the lock, as the read fast path does
    // (entries change only synchronously under it).
    const ext = image.lookupCached(offset, bytes);
    if (ext) return prealloc.mark(extentStatus(image, ext, offset));
    return image.lock.run(() => image.lookup(offset, bytes)).then((e) =>
      prealloc.mark(extentStatus(image, e, offset))
    );
  }

  /** Writes back the L2 and refcount caches (the generic layer then flushes `file`). */
  flush(): Promise<void> {
    const image = this.image;
    if (image.broken || !image.writable) return Promise.resolve();
    return image.lock.run(() => image.flushCaches());
  }

  /** The bytes the image file takes; ENOTSUP when its driver cannot say (NBD), as QEMU's. */
  async allocatedSize(): Promise<number> {
    const inst = this.image.file.instance;
    if (!inst?.allocatedSize) {
      throw new BlockError("ENOTSUP", "The image file's allocated size is unknown");
    }
    return await inst.allocatedSize();
  }

  /** `info`'s format-specific facts, with QEMU's field names. */
  formatInfo(): FormatSpecificInfo {
    return qcow2FormatInfo(this.image);
  }

  /** The cluster size (the default bitmap granularity comes from it). */
  get clusterSize(): number {
    return this.image.cs;
  }

  /** Where the VM state area begins, as `qemu-io info` shows it (see `vmStateOffset`). */
  get vmStateOffset(): number {
    return vmStateOffset(this.image);
  }

  /** Throws QEMU's error when a persistent bitmap `name` could not be stored (bitmaps.ts). */
  canStoreDirtyBitmap(name: string, granularity: number): void {
    canStoreBitmap(this.image, this.#node, name, granularity);
  }

  /** A persistent bitmap was removed: its directory entry and clusters go now (bitmaps.ts). */
  dirtyBitmapRemoved(name: string): Promise<void> {
    return bitmapRemoved(this.image, this.#node, name);
  }

  /**
   * Resizes the virtual disk (QEMU's `qcow2_co_truncate`): growth moves the L1 table as
   * needed and preallocates with `metadata`, `falloc` or `full`; shrinking frees everything
   * past the new end (the `--shrink` confirmation is the caller's). Sizes are multiples of
   * 512, as QEMU's; a version 2 image with internal snapshots cannot be resized.
   */
  truncate(offset: number, _exact: boolean, prealloc: PreallocMode): Promise<void> {
    const image = this.image;
    if (image.broken) return Promise.reject(image.brokenError());
    if (offset % 512 !== 0) {
      return Promise.reject(new BlockError("EINVAL", "The new size must be a multiple of 512"));
    }
    if (image.header.version < 3 && image.snapshots.length > 0) {
      // A version 2 snapshot table has no disk size: its snapshots take the image's.
      return Promise.reject(
        new BlockError("ENOTSUP", "Can't resize a v2 image which has snapshots"),
      );
    }
    try {
      truncateBitmapsCheck(image, this.#node);
    } catch (e) {
      return Promise.reject(e);
    }
    const old = image.header.size;
    const backing = this.#backing();
    if (offset > old && backing !== null && backing.getLength() > old) {
      return this.#growOverBacking(offset, prealloc);
    }
    return this.#idle(() => truncateImage(image, offset, prealloc));
  }

  /**
   * Grows the disk over a backing file longer than it (QEMU's `bdrv_co_truncate` asks for
   * BDRV_REQ_ZERO_WRITE then): the new area reads as zeros, not as the backing file. Zeros
   * are written from the old end to the next (sub)cluster boundary before the size changes,
   * and the (sub)clusters after it become zero clusters (version 2 has none: ENOTSUP, as
   * QEMU's "Failed to zero out new clusters").
   */
  async #growOverBacking(size: number, prealloc: PreallocMode): Promise<void> {
    const image = this.image;
    const old = image.header.size;
    const boundary = Math.ceil(old / image.sc) * image.sc;
    if (image.header.version < 3 && size > boundary) {
      throw new BlockError("ENOTSUP", `Failed to zero out new clusters: ${strerror("ENOTSUP")}`);
    }
    const head = Math.min(boundary, size) - old;
    // Past the old end: the write loop, not pwritev, which checks the range against it.
    if (head > 0) await this.#writeLoop(old, head, IoVector.of(new Uint8Array(head)), 0);
    await this.#idle(() => truncateImage(image, size, prealloc, true));
  }

  /** Runs `fn` under the metadata lock once no allocation and no in-place write is in flight. */
  #idle<T>(fn: () => Promise<T>): Promise<T> {
    return whenIdle(this.image, fn);
  }

  /**
   * QEMU's refcount check (`qemu-img check`), repairing leaks or everything with `leaks` or
   * `all` (then checking again). Repairs need the node opened read/write; open with
   * `check-open: true` to check a corrupt or dirty image without the repair on open.
   */
  check(repair: "none" | "leaks" | "all"): Promise<Qcow2CheckResult> {
    return this.#idle(() => checkImage(this.image, repair));
  }

  /**
   * QEMU's `bdrv_make_empty` (what `qemu-img commit` does to the top without `-d`): every
   * guest cluster becomes unallocated (reading from the backing file again) and the active
   * L2 tables are freed; internal snapshots keep their clusters. See make_empty.ts.
   */
  async makeEmpty(): Promise<void> {
    const image = this.image;
    if (image.broken) throw image.brokenError();
    if (!image.writable) throw new BlockError("EACCES", "Image is read-only");
    if (image.autoclearPending) await this.#clearAutoclear();
    await this.#idle(() => makeEmptyImage(image));
  }

  /** The internal snapshots, as `img info` and `img snapshot -l` show them. */
  snapshotList(): Qcow2Snapshot[] {
    return snapshotInfo(this.image.snapshots);
  }

  /** Creates an internal snapshot called `name` (`qemu-img snapshot -c`). */
  snapshotCreate(name: string): Promise<void> {
    if (this.image.external) return Promise.reject(noSnapshots());
    return this.#idle(() => createSnapshot(this.image, name));
  }

  /**
   * Reads the internal snapshot `id` and/or `name` from now on, on a read-only node (QEMU's
   * `bdrv_snapshot_load_tmp`, `qemu-img convert -l`): its L1 table replaces the active one
   * in memory; nothing is written. Errors: "Device is not readonly", "Can't find snapshot".
   */
  snapshotLoadTemporarily(id: string | undefined, name: string | undefined): Promise<void> {
    return this.#idle(() => loadSnapshotTemporarily(this.image, id, name));
  }

  /** Reverts the disk to a snapshot, by ID or name (`qemu-img snapshot -a`). */
  snapshotApply(nameOrId: string): Promise<void> {
    if (this.image.external) return Promise.reject(noSnapshots());
    return this.#idle(() => applySnapshot(this.image, nameOrId));
  }

  /** Deletes the first snapshot named `name` (`qemu-img snapshot -d`: names only, not IDs). */
  snapshotDelete(name: string): Promise<void> {
    return this.#idle(() => deleteSnapshot(this.image, name));
  }

  /**
   * `qemu-img amend -o`: compat, lazy_refcounts, refcount_bits, size, data_file, LUKS key
   * slots (`force`: `--force`); backing_file and backing_fmt only as they are (QEMU 7.2
   * refuses changing them: see {@link Qcow2Instance.changeBackingFile}); any other option
   * fails with QEMU's message.
   * `progress` hears how far the work has come (`done` of `total`), as QEMU's status
   * callback.
   */
  async amend(options: OptionValues, progress?: AmendProgress, force = false): Promise<void> {
    const backed = this.#backing() !== null;
    const rest = await this.#idle(() => amendImage(this.image, options, backed, progress, force));
    // The size as a resize does it (QEMU's amend calls blk_truncate): its checks, and zeros
    // where a longer backing file would show.
    if (rest.size) await this.truncate(rest.size, false, "off");
    if (rest.finish) await this.#idle(rest.finish);
  }

  /**
   * Names another backing file (and format) in the header, or none (`file` empty), without
   * opening it: QEMU's `bdrv_change_backing_file`, the last step of `qemu-img rebase`.
   */
  changeBackingFile(file: string, format?: string): Promise<void> {
    return this.#idle(() => changeBackingFile(this.image, file, format));
  }

  /**
   * Switches between read-only and read-write and takes the runtime options anew, as QEMU's
   * `qcow2_reopen_prepare` (see reopen.ts `reopenQcow2`).
   */
  reopenPrepare(options: OptionValues, readOnly: boolean): Promise<ReopenHandle> {
    return reopenQcow2(this.image, this.#node, options, readOnly, (fn) => this.#idle(fn));
  }

  #autoclear: Promise<void> | null = null;

  /** Marks bitmaps in use once, before the first write after a reopen read-write. */
  #clearAutoclear(): Promise<void> {
    const image = this.image;
    return this.#autoclear ??= image.lock.run(async () => {
      if (image.autoclearPending) await reopenBitmapsRw(image, this.#node);
      image.autoclearPending = false;
    }).finally(() => (this.#autoclear = null));
  }

  /** Writes back the caches (unless the image was found corrupt); a clean close ends dirt. */
  async close(): Promise<void> {
    const image = this.image;
    image.cleaner.dispose();
    if (image.writable && !image.broken) {
      await image.lock.run(async () => {
        await storeBitmapsAtClose(image, this.#node);
        await image.flushCaches();
        await image.flush();
        if (image.lazy) await image.markClean();
      });
    }
    await image.settle();
  }
}
