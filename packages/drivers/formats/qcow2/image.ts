/**
 * The state of an open qcow2 image: header, L1 table, L2 cache, refcounts, overlap map,
 * locks, and the corrupt state. It answers "where is guest cluster N" (`lookup`), makes L2
 * tables writable (`l2ForWrite`), frees clusters in a crash-safe order (`frees`,
 * free_queue.ts) and flushes its caches.
 *
 * Metadata order on allocation (crash leaves at most leaked clusters):
 * 1. refcounts are raised in the refcount cache when clusters are allocated;
 * 2. guest data (with its COW head and tail) is written to the new clusters;
 * 3. the L2 entry is set in the L2 cache; before any L2 table is written back, the refcount
 *    blocks are written and the file flushed (which also makes step 2 stable);
 * 4. a new L2 table is written and flushed before the L1 entry naming it (L1 is written
 *    through).
 * Frees go the other way: the L2 and L1 changes are written and flushed before refcounts drop.
 * With lazy refcounts (compat 1.1 `lazy_refcounts=on`) step 3 and 4 skip the refcount writes
 * and flushes: the dirty bit is set on disk first, refcount blocks are written on flush, and
 * a clean close clears the bit. A crash leaves a dirty image that the next read/write open
 * repairs (QEMU's iotest 039). The `lazy-refcounts` option overrides the header's bit for
 * one open (`useLazy`), as QEMU's `use_lazy_refcounts`.
 *
 * Runtime options (runtime_options.ts) set the cache sizes, the overlap checks, which frees
 * are discarded in the file and the cache cleaning timer (`applyOptions`, `cleaner`).
 *
 * @module
 */

import { type BlockError, type FormatSpecificInfo, IoVector, type Node } from "@blockgraph/core";
import { type Extent, extentIn, extentInExt } from "./extent.ts";
import {
  COPIED_HI,
  copiedEntry,
  entryOffset,
  hex,
  Incompat,
  KIND_DATA_FILE,
  KIND_EXTL2,
  setU64,
  SUBCLUSTERS,
  viewOf,
} from "./format.ts";
import { type Qcow2Header, serializeHeader } from "./header.ts";
import { FreeQueue } from "./free_queue.ts";
import { L2Cache } from "./l2_cache.ts";
import { ClusterClaims, InflightWrites, Mutex } from "./locks.ts";
import { CacheCleaner } from "./cache_cleaner.ts";
import type { MetaIo } from "./meta_io.ts";
import type { DiscardType, Qcow2RuntimeOptions } from "./runtime_options.ts";
import { MetadataMap, type WriteKind } from "./overlap.ts";
import { Refcounts, type RefcountTablePlace } from "./refcount.ts";
import type { SnapshotEntry } from "./snapshot_table.ts";
import { Corruption, type CorruptionSink } from "./corruption.ts";
import type { Qcow2Crypto } from "./encryption.ts";
import { CRYPT_SECTOR } from "../../crypto/sector_cipher.ts";

/** An open qcow2 image's state. */
export class Qcow2Image implements MetaIo {
  /** The image file. */
  readonly file: Node;
  /** The header as it is on disk. */
  readonly header: Qcow2Header;
  /** The cluster size. */
  readonly cs: number;
  /** Entries per L2 table. */
  readonly l2Entries: number;
  /** Whether L2 entries are extended (16 bytes: entry and subcluster bitmap). */
  readonly extL2: boolean;
  /** Bytes per L2 entry: 8, or 16 with extended L2 entries. */
  readonly l2Stride: number;
  /** The subcluster size: the cluster size / 32 with extended L2 entries, else the cluster. */
  readonly sc: number;
  /** How L2 entries are classified (`classify`'s mode). */
  kindMode: number;
  /**
   * Where guest data lives: the image file, or the external data file (where host offsets
   * are guest offsets and data clusters have no refcounts).
   */
  data: Node;
  /** Whether guest data lives in an external data file. */
  external = false;
  /** Whether the external data file is kept a consistent raw image (autoclear bit 1). */
  dataRaw = false;
  /** L1 entries: L2 table offsets (0: none). */
  readonly l1: number[];
  /** L1 COPIED flags. */
  readonly l1Copied: boolean[];
  /** The overlap map. */
  readonly map: MetadataMap;
  /** The refcount structures. */
  refcounts: Refcounts;
  #refcountCacheBlocks: number;
  /**
   * Where the next compressed cluster may go (0: start a new cluster). Reset whenever that
   * cluster is freed, so compressed data never lands in a cluster allocated since.
   */
  freeByte = 0;
  /** The L2 cache. */
  readonly l2: L2Cache;
  /** Held around metadata work. */
  readonly lock: Mutex = new Mutex();
  /** Guest clusters being allocated. */
  readonly claims: ClusterClaims = new ClusterClaims();
  /** Host clusters with in-place guest writes in flight (frees wait for them). */
  readonly inflight: InflightWrites = new InflightWrites();
  /** Whether the image may be written (a reopen may change it). */
  writable: boolean;
  /** Read-write after a reopen: autoclear bits must be cleared before the first write. */
  autoclearPending = false;
  /** The internal snapshots, in table order. */
  snapshots: SnapshotEntry[] = [];
  /** The snapshot table's length in bytes. */
  snapshotsBytes = 0;
  /** An encrypted image's `encrypt` facts (`encryption_info.ts`), or null. */
  encryption: FormatSpecificInfo | null = null;
  /**
   * An encrypted image's data cipher (`encryption.ts`), or null: also null for an encrypted
   * image opened for its metadata only, whose data is then never read or written.
   */
  crypto: Qcow2Crypto | null = null;
  /**
   * Refcount updates are deferred behind the dirty bit (compat 1.1 lazy_refcounts): while
   * writable, with `useLazy`.
   */
  lazy = false;
  /**
   * Lazy refcounts are in use when the image is writable (QEMU's `use_lazy_refcounts`): the
   * `lazy-refcounts` option, by default the header's bit.
   */
  useLazy = false;
  /**
   * Whether clusters freed for each reason are discarded in the file (the `pass-discard-*`
   * options; QEMU's `discard_passthrough`).
   */
  passDiscard: Record<DiscardType, boolean> = {
    never: false,
    always: true,
    request: false,
    snapshot: true,
    other: false,
  };
  /** The `cache-clean-interval` timer of the L2 and refcount caches. */
  readonly cleaner: CacheCleaner = new CacheCleaner(this.lock, () => [this.l2, this.refcounts]);
  /**
   * Allocating writes zero the untouched rest of new clusters with a write-zeroes (cleared
   * once the image file answers ENOTSUP: then they copy zeros).
   */
  zeroCowAllowed = true;
  /** Corruption found in the image, and what it stopped. */
  readonly #corruption: Corruption;
  /** Clusters to free once nothing on disk names them any more. */
  readonly frees: FreeQueue = new FreeQueue(this);

  /** Puts guest data in the external data file `node` (`raw`: data-file-raw). */
  setDataFile(node: Node, raw: boolean): void {
    this.data = node;
    this.external = true;
    this.dataRaw = raw;
    this.kindMode |= KIND_DATA_FILE;
  }

  /** Builds the state; `l1Raw` and `refTable` are the tables read at open. */
  constructor(
    file: Node,
    header: Qcow2Header,
    l1Raw: Uint8Array,
    refTable: number[],
    writable: boolean,
    l2CacheTables: number,
    sink: CorruptionSink,
    refcountCacheBlocks = Number.MAX_SAFE_INTEGER,
  ) {
    this.file = file;
    this.header = header;
    this.writable = writable;
    this.#corruption = new Corruption(sink, header, file);
    this.cs = 2 ** header.clusterBits;
    this.extL2 = (header.incompatible & BigInt(Incompat.EXTL2)) !== 0n;
    this.l2Stride = this.extL2 ? 16 : 8;
    this.l2Entries = this.cs / this.l2Stride;
    this.sc = this.extL2 ? this.cs / SUBCLUSTERS : this.cs;
    this.kindMode = this.extL2 ? KIND_EXTL2 : 0;
    this.data = file;
    const view = viewOf(l1Raw);
    this.l1 = [];
    this.l1Copied = [];
    const map = new MetadataMap(header.clusterBits);
    this.map = map;
    map.setRange("qcow2_header", 0, this.cs);
    map.setRange("active L1 table", header.l1TableOffset, header.l1Size * 8);
    map.setRange(
      "refcount table",
      header.refcountTableOffset,
      header.refcountTableClusters * this.cs,
    );
    for (let i = 0; i < header.l1Size; i++) {
      const hi = view.getUint32(i * 8);
      const off = entryOffset(hi, view.getUint32(i * 8 + 4));
      this.l1.push(off);
      this.l1Copied.push((hi & COPIED_HI) !== 0);
      if (off !== 0 && off % this.cs === 0) map.setL2(off, true);
    }
    this.#refcountCacheBlocks = refcountCacheBlocks;
    this.refcounts = this.makeRefcounts(header.refcountOrder, refTable, {
      offset: header.refcountTableOffset,
      clusters: header.refcountTableClusters,
    });
    this.l2 = new L2Cache(
      l2CacheTables,
      (off) => this.#loadL2(off),
      (off, table) => this.write("active L2 table", off, table),
      async () => {
        if (this.lazy) return await this.markDirty();
        await this.refcounts.writeback();
        await this.flush();
      },
    );
  }

  /**
   * Refcount structures of width `2^order` over `table` at `place`, wired to move the
   * header's table pointer when the table grows.
   */
  makeRefcounts(
    order: number,
    table: number[],
    place: RefcountTablePlace,
    fileLength: number = this.file.getLength(),
  ): Refcounts {
    const rc = new Refcounts(
      this,
      this.map,
      this.header.clusterBits,
      order,
      table,
      place,
      fileLength,
      this.#refcountCacheBlocks,
    );
    this.freeByte = 0;
    rc.onBlockLoaded = () => this.cleaner.wake();
    rc.onFreed = (c) => {
      if (Math.floor(this.freeByte / this.cs) === c) this.freeByte = 0;
    };
    rc.onOldTableFreed = async (first, count) => {
      if (this.passDiscard.other) await this.frees.discardFreed([[first, count]]);
    };
    rc.onTableMoved = async (p) => {
      const buf = new Uint8Array(12);
      setU64(viewOf(buf), 0, p.offset);
      viewOf(buf).setUint32(8, p.clusters);
      await this.write("qcow2_header", 48, buf);
      await this.flush();
      this.header.refcountTableOffset = p.offset;
      this.header.refcountTableClusters = p.clusters;
    };
    return rc;
  }

  /** Rewrites the whole first cluster from `header` (fields, extensions, backing name). */
  async writeHeader(): Promise<void> {
    await this.write("qcow2_header", 0, serializeHeader(this.header));
    await this.flush();
  }

  // ------------------------------------------------------------------ MetaIo

  /** Reads from the image file. */
  read(offset: number, buf: Uint8Array): Promise<void> {
    return this.file.read(offset, buf);
  }

  /**
   * The overlap check before a write of `kind` to the image file: null when the range is
   * free of the metadata it must not touch, else the error (the image is marked corrupt).
   */
  overlapError(kind: WriteKind, offset: number, bytes: number): Error | null {
    const hit = this.map.check(kind, offset, bytes);
    if (hit === null) return null;
    return this.corrupt(
      `Preventing invalid write on metadata (overlaps with ${hit})`,
      offset,
      bytes,
    );
  }

  /** Writes metadata or data after the overlap check; a hit marks the image corrupt. */
  write(kind: WriteKind, offset: number, buf: Uint8Array): Promise<void> {
    const err = this.overlapError(kind, offset, buf.length);
    return err ? Promise.reject(err) : this.file.write(offset, buf);
  }

  /**
   * Writes guest data to the data file (the image file after the overlap check), encrypted
   * when the image is.
   */
  writeData(offset: number, bytes: number, qiov: IoVector, qiovOffset: number): Promise<void> {
    const err = this.external ? null : this.overlapError("data", offset, bytes);
    if (err) return Promise.reject(err);
    const crypto = this.crypto;
    if (crypto === null) return this.data.pwritev(offset, bytes, qiov, qiovOffset);
    // Encrypted in a copy (the caller's buffers stay as they were), by host offset (LUKS).
    const buf = qiov.toBuffer(qiovOffset, bytes);
    try {
      crypto.cipher.encrypt(buf, offset / CRYPT_SECTOR);
    } catch (e) {
      return Promise.reject(e);
    }
    return this.data.pwritev(offset, bytes, IoVector.of(buf), 0);
  }

  /** Flushes the image file. */
  flush(): Promise<void> {
    return this.file.flush();
  }

  /** Set once corruption was found in a writable image: all I/O fails from then on. */
  get broken(): boolean {
    return this.#corruption.broken;
  }

  /** Stops all I/O without marking anything on disk (what a crash leaves, in tests). */
  set broken(broken: boolean) {
    this.#corruption.broken = broken;
  }

  /**
   * QEMU's `qcow2_signal_corruption` (corruption.ts): marks a writable image corrupt and
   * stops its I/O, reports a read-only one once. Returns the EIO error to fail with.
   */
  corrupt(message: string, offset?: number, size?: number): Error {
    return this.#corruption.signal(message, this.writable, offset, size);
  }

  /** Waits for a corrupt marking in progress (before close). */
  settle(): Promise<void> {
    return this.#corruption.settle();
  }

  /** The error every request gets once the image was found corrupt. */
  brokenError(): BlockError {
    return this.#corruption.brokenError();
  }

  // ------------------------------------------------------------------ mapping

  async #loadL2(offset: number): Promise<Uint8Array> {
    if (offset % this.cs !== 0) {
      throw this.corrupt(`L2 table offset ${hex(offset)} unaligned`, offset, this.cs);
    }
    if (offset < this.cs || offset + this.cs > this.file.getLength()) {
      throw this.corrupt(
        `L2 table offset ${hex(offset)} ${
          offset < this.cs ? "overlaps the qcow2 header" : "is beyond the end of the image file"
        }`,
        offset,
        this.cs,
      );
    }
    const buf = new Uint8Array(this.cs);
    this.cleaner.wake();
    await this.read(offset, buf);
    return buf;
  }

  /**
   * The extent at guest `offset`, at most `bytes` long and within one L2 table: clusters of
   * the same kind (and contiguous on the host for normal ones). Call with `lock` held.
   */
  async lookup(offset: number, bytes: number): Promise<Extent> {
    const g = Math.floor(offset / this.cs);
    const l1i = Math.floor(g / this.l2Entries);
    const l2Off = l1i < this.l1.length ? this.l1[l1i]! : 0;
    if (this.extL2) {
      return extentInExt(this, l2Off === 0 ? null : await this.l2.get(l2Off), l2Off, offset, bytes);
    }
    if (l2Off === 0) return extentIn(this, null, 0, offset, bytes);
    return extentIn(this, await this.l2.get(l2Off), l2Off, offset, bytes);
  }

  /**
   * `lookup` without the metadata lock and without waiting: the extent when its L2 table is
   * cached (or there is none), else null. Entries change only synchronously under the lock,
   * so a cached table is never seen half-updated.
   */
  lookupCached(offset: number, bytes: number): Extent | null {
    const g = Math.floor(offset / this.cs);
    const l1i = Math.floor(g / this.l2Entries);
    const l2Off = l1i < this.l1.length ? this.l1[l1i]! : 0;
    if (this.extL2) {
      if (l2Off === 0) return extentInExt(this, null, 0, offset, bytes);
      const t = this.l2.peek(l2Off);
      return t ? extentInExt(this, t, l2Off, offset, bytes) : null;
    }
    if (l2Off === 0) return extentIn(this, null, 0, offset, bytes);
    const table = this.l2.peek(l2Off);
    return table ? extentIn(this, table, l2Off, offset, bytes) : null;
  }

  /**
   * The L2 entry of guest cluster `g` (zeros without an L2 table): high and low words, then
   * with extended L2 entries the subcluster bitmap's "reads as zero" and "allocated" words
   * (zeros otherwise). Call with `lock` held.
   */
  async entryAt(g: number): Promise<[number, number, number, number]> {
    const l1i = Math.floor(g / this.l2Entries);
    const off = l1i < this.l1.length ? this.l1[l1i]! : 0;
    if (off === 0) return [0, 0, 0, 0];
    const view = viewOf(await this.l2.get(off));
    const i = (g % this.l2Entries) * this.l2Stride;
    if (!this.extL2) return [view.getUint32(i), view.getUint32(i + 4), 0, 0];
    return [
      view.getUint32(i),
      view.getUint32(i + 4),
      view.getUint32(i + 8),
      view.getUint32(i + 12),
    ];
  }

  /**
   * Makes the L2 tables of guest clusters `g0 .. g0 + count - 1` writable (COPIED) before
   * their data clusters are allocated, as QEMU's `handle_alloc` does (`get_cluster_table`
   * first): a new L2 table then lands in front of the data, and the data of consecutive guest
   * clusters stays contiguous in the file. Takes `lock` only when a table must be made.
   */
  async ensureL2(g0: number, count: number): Promise<void> {
    const E = this.l2Entries;
    for (let l1i = Math.floor(g0 / E); l1i <= Math.floor((g0 + count - 1) / E); l1i++) {
      if (l1i < this.l1.length && this.l1[l1i] !== 0 && this.l1Copied[l1i]) continue;
      await this.lock.run(() => this.l2ForWrite(l1i));
    }
  }

  /**
   * The offset of a writable (COPIED) L2 table for L1 index `l1i`: allocates a new one, or
   * copies a shared one, writing it before the L1 entry. Call with `lock` held.
   */
  async l2ForWrite(l1i: number): Promise<number> {
    const cur = this.l1[l1i]!;
    if (cur !== 0 && this.l1Copied[l1i]) return cur;
    const table = cur === 0 ? new Uint8Array(this.cs) : (await this.l2.get(cur)).slice();
    const off = await this.refcounts.alloc(1);
    if (this.lazy) await this.markDirty();
    else {
      await this.refcounts.writeback();
      await this.flush();
    }
    await this.write("active L2 table", off, table);
    await this.flush();
    const entry = new Uint8Array(8);
    setU64(viewOf(entry), 0, off);
    entry[0]! |= 0x80;
    await this.write("active L1 table", this.header.l1TableOffset + l1i * 8, entry);
    this.l1[l1i] = off;
    this.l1Copied[l1i] = true;
    this.map.setL2(off, true);
    await this.l2.put(off, table, false);
    if (cur !== 0) {
      this.map.setL2(cur, false);
      this.l2.drop(cur);
      this.frees.add(cur, 1, "other");
    }
    return off;
  }

  /** Writes L1 entry `i` (offset and COPIED flag) to the active L1 table on disk. */
  async writeL1Entry(i: number): Promise<void> {
    const entry = new Uint8Array(8);
    setU64(viewOf(entry), 0, this.l1[i]!);
    if (this.l1Copied[i] && this.l1[i] !== 0) entry[0]! |= 0x80;
    await this.write("active L1 table", this.header.l1TableOffset + i * 8, entry);
  }

  /**
   * Sets the dirty bit on disk (once) before tables that may name clusters whose refcounts
   * are not written yet (lazy refcounts).
   */
  async markDirty(): Promise<void> {
    const h = this.header;
    if ((h.incompatible & BigInt(Incompat.DIRTY)) !== 0n) return;
    await this.refcounts.writeback();
    await this.flush();
    h.incompatible |= BigInt(Incompat.DIRTY);
    const buf = new Uint8Array(8);
    viewOf(buf).setBigUint64(0, h.incompatible);
    await this.writeHeaderField(72, buf);
  }

  /** Clears the dirty bit after every cache was written and flushed. Call with `lock` held. */
  async markClean(): Promise<void> {
    const h = this.header;
    if ((h.incompatible & BigInt(Incompat.DIRTY)) === 0n) return;
    await this.flushCaches();
    await this.flush();
    h.incompatible &= ~BigInt(Incompat.DIRTY);
    const buf = new Uint8Array(8);
    viewOf(buf).setBigUint64(0, h.incompatible);
    await this.writeHeaderField(72, buf);
  }

  /** Writes a header field of `buf.length` bytes at `at`, then flushes. */
  async writeHeaderField(at: number, buf: Uint8Array): Promise<void> {
    await this.write("qcow2_header", at, buf);
    await this.flush();
  }

  /**
   * Applies runtime options read by `readRuntimeOptions` (at open, and when a reopen commits):
   * cache sizes, overlap checks, discard passing, lazy refcounts (in use while writable) and
   * the cache cleaning timer, restarted only when its interval changes.
   */
  applyOptions(o: Qcow2RuntimeOptions): void {
    this.l2.resize(o.l2CacheTables);
    this.#refcountCacheBlocks = o.refcountCacheBlocks;
    this.refcounts.resize(o.refcountCacheBlocks);
    this.map.mask = o.overlapCheck;
    this.passDiscard = o.passDiscard;
    this.useLazy = o.lazyRefcounts;
    this.lazy = this.writable && o.lazyRefcounts;
    this.cleaner.setInterval(o.cacheCleanInterval);
  }

  /**
   * Writes back and forgets every cached L2 table and refcount block, so that code working on
   * the structures on disk (snapshots, check, resize) sees them as they are. Call with `lock`
   * held.
   */
  async quiesce(): Promise<void> {
    await this.flushCaches();
    await this.flush();
    this.l2.clear();
  }

  /**
   * Sets the L2 entry of guest cluster `g` in its (writable) table, with extended L2 entries
   * also its subcluster bitmap (`zeroBits`, `allocBits`; none by default). Call with `lock`
   * held.
   */
  async setEntry(g: number, hi: number, lo: number, zeroBits = 0, allocBits = 0): Promise<void> {
    const l1i = Math.floor(g / this.l2Entries);
    const off = await this.l2ForWrite(l1i);
    const table = await this.l2.get(off);
    const view = viewOf(table);
    const i = (g % this.l2Entries) * this.l2Stride;
    view.setUint32(i, hi);
    view.setUint32(i + 4, lo);
    if (this.extL2) {
      view.setUint32(i + 8, zeroBits >>> 0);
      view.setUint32(i + 12, allocBits >>> 0);
    }
    this.l2.markDirty(off);
  }

  /**
   * `setEntry` of `count` guest clusters from `g0` to the COPIED clusters from host `host`
   * without waiting: true when done, false when an L2 table is not cached or not writable
   * yet (then nothing changed). Call with the lock free (this takes the place of holding it).
   */
  setEntriesCached(g0: number, count: number, host: number): boolean {
    const E = this.l2Entries;
    if (this.extL2) return false;
    const tables: Uint8Array[] = [];
    for (let l1i = Math.floor(g0 / E); l1i <= Math.floor((g0 + count - 1) / E); l1i++) {
      const off = l1i < this.l1.length ? this.l1[l1i]! : 0;
      if (off === 0 || !this.l1Copied[l1i]) return false;
      const t = this.l2.touch(off);
      if (!t) return false;
      tables.push(t);
    }
    const first = Math.floor(g0 / E);
    for (let k = 0; k < count; k++) {
      const g = g0 + k;
      const l1i = Math.floor(g / E);
      const view = viewOf(tables[l1i - first]!);
      const i = (g % E) * 8;
      const [hi, lo] = copiedEntry(host + k * this.cs);
      view.setUint32(i, hi);
      view.setUint32(i + 4, lo);
      this.l2.markDirty(this.l1[l1i]!);
    }
    return true;
  }

  /** Writes back the caches (L2 tables after the refcount blocks). Call with `lock` held. */
  async flushCaches(): Promise<void> {
    await this.frees.commit();
    await this.l2.flush();
    await this.refcounts.writeback();
  }
}

/**
 * Where the VM state area begins (QEMU's `qcow2_vm_state_offset`): the virtual disk's size
 * rounded up to what one L1 entry maps, so that the area has L2 tables of its own.
 */
export function vmStateOffset(image: Qcow2Image): number {
  const span = image.cs * image.l2Entries;
  return Math.ceil(image.header.size / span) * span;
}
