/**
 * Refcounts: the refcount table and its refcount blocks (any width from 1 to 64 bits),
 * cluster allocation and freeing, new refcount blocks and the growth of the table.
 *
 * Ordering, so that a crash leaves at most leaked clusters:
 * - a new refcount block is written (and the file flushed) before the table entry naming it;
 * - a grown refcount table is written with its new blocks and flushed before the header
 *   points to it; the old table is freed only after that;
 * - refcount increments sit in the (write-back) block cache; the L2 cache writes them back
 *   and flushes before it writes any table that uses the clusters (see `writeback`).
 *
 * @module
 */

import { BlockError } from "@blockgraph/core";
import { getU64, hex, setU64, viewOf } from "./format.ts";
import type { MetaIo } from "./meta_io.ts";
import type { MetadataMap } from "./overlap.ts";

/** Where the refcount table lives. */
export interface RefcountTablePlace {
  /** Its offset in the image file. */
  offset: number;
  /** Its size in clusters. */
  clusters: number;
}

/** Entry `idx` of a refcount block whose entries are `2^order` bits wide. */
export function refcountEntry(block: Uint8Array, idx: number, order: number): number {
  switch (order) {
    case 3:
      return block[idx]!;
    case 4:
      return (block[idx * 2]! << 8) | block[idx * 2 + 1]!;
    case 5:
      return viewOf(block).getUint32(idx * 4);
    case 6:
      return getU64(viewOf(block), idx * 8);
  }
  const bits = 2 ** order;
  const bitPos = idx * bits;
  return (block[bitPos >> 3]! >> (bitPos & 7)) & ((1 << bits) - 1);
}

/** Sets entry `idx` of a refcount block whose entries are `2^order` bits wide. */
export function setRefcountEntry(block: Uint8Array, idx: number, order: number, v: number): void {
  switch (order) {
    case 3:
      block[idx] = v;
      return;
    case 4:
      block[idx * 2] = v >> 8;
      block[idx * 2 + 1] = v & 0xff;
      return;
    case 5:
      viewOf(block).setUint32(idx * 4, v);
      return;
    case 6:
      setU64(viewOf(block), idx * 8, v);
      return;
  }
  const bits = 2 ** order;
  const bitPos = idx * bits;
  const mask = ((1 << bits) - 1) << (bitPos & 7);
  const b = bitPos >> 3;
  block[b] = (block[b]! & ~mask) | ((v << (bitPos & 7)) & mask);
}

/** The refcount structures of an open image. */
export class Refcounts {
  readonly #io: MetaIo;
  readonly #map: MetadataMap;
  readonly #cs: number;
  readonly #order: number;
  readonly #bits: number;
  /** Entries per refcount block. */
  readonly entriesPerBlock: number;
  /** The largest refcount an entry holds. */
  readonly max: number;
  #table: number[];
  #place: RefcountTablePlace;
  /** How many refcount blocks the cache holds (least recently used go first; see `resize`). */
  capacity: number;
  readonly #blocks = new Map<number, Uint8Array>();
  /**
   * The cleaning generation of each cached block's last use, by table index (`cleanUnused`):
   * a use is one store into a typed array (grown when the table reaches past it), no
   * allocation and no sparse-array dictionary.
   */
  #used = new Uint32Array(0);
  #gen = 1;
  /** The block inserted last and still cached (-1: none), which a hit need not move. */
  #mru = -1;
  readonly #dirty = new Set<number>();
  /**
   * Where the search for free clusters starts (QEMU's free_cluster_index): just past the last
   * run allocated, or lower when a cluster before it is freed. Holes an allocation skipped
   * because they were too small stay unused until something before them is freed, as in
   * QEMU, so both lay out the same operations alike.
   */
  #freeHint = 0;
  /** Clusters at and after this one are free: past the end of everything allocated. */
  endCluster: number;
  /**
   * Table indices whose entry had reserved bits set when the image was opened (check reports
   * them and rebuilds the structure, as QEMU does).
   */
  reserved: ReadonlySet<number> = new Set();
  /** Called when the refcount of cluster `c` drops to zero (it may be allocated again). */
  onFreed: (c: number) => void = () => {};
  /** Called when a refcount block is read into the cache (the cleaning timer starts). */
  onBlockLoaded: () => void = () => {};
  /** Called after the table moved (the header must point to it). */
  onTableMoved: (place: RefcountTablePlace) => Promise<void> = () => Promise.resolve();
  /**
   * Called after the old table's clusters were freed (`count` from cluster `first`), which
   * nothing names any more: QEMU's discard type `other` for them.
   */
  onOldTableFreed: (first: number, count: number) => Promise<void> = () => Promise.resolve();

  /** Wraps the table read at open; `fileLength` bounds what is allocated. */
  constructor(
    io: MetaIo,
    map: MetadataMap,
    clusterBits: number,
    order: number,
    table: number[],
    place: RefcountTablePlace,
    fileLength: number,
    capacity = Number.MAX_SAFE_INTEGER,
  ) {
    this.capacity = Math.max(4, capacity);
    this.#io = io;
    this.#map = map;
    this.#cs = 2 ** clusterBits;
    this.#order = order;
    this.#bits = 2 ** order;
    this.entriesPerBlock = (this.#cs * 8) / this.#bits;
    this.max = this.#bits >= 53 ? Number.MAX_SAFE_INTEGER : 2 ** this.#bits - 1;
    this.#table = table;
    this.#place = place;
    this.endCluster = Math.ceil(fileLength / this.#cs);
    for (let i = 0; i < table.length; i++) if (table[i] !== 0) map.addRefblock(table[i]!);
  }

  /** The refcount table's entries (offsets of refcount blocks, 0 for none). */
  get table(): readonly number[] {
    return this.#table;
  }

  /** Where the table lives. */
  get place(): RefcountTablePlace {
    return this.#place;
  }

  /** Whether refcount blocks wait to be written. */
  get dirty(): boolean {
    return this.#dirty.size > 0;
  }

  #entry(block: Uint8Array, idx: number): number {
    return refcountEntry(block, idx, this.#order);
  }

  #setEntry(block: Uint8Array, idx: number, v: number): void {
    setRefcountEntry(block, idx, this.#order, v);
  }

  /** Records a use of block `i` for `cleanUnused`. */
  #stamp(i: number): void {
    let used = this.#used;
    if (i >= used.length) {
      const grown = new Uint32Array(Math.max(i + 1, used.length * 2, 64));
      grown.set(used);
      this.#used = used = grown;
    }
    used[i] = this.#gen;
  }

  /** The refcount block for table index `i`, or null when it has none. */
  async #block(i: number): Promise<Uint8Array | null> {
    const cached = this.#blocks.get(i);
    if (cached) {
      this.#stamp(i);
      if (i !== this.#mru) {
        this.#blocks.delete(i);
        this.#blocks.set(i, cached);
        this.#mru = i;
      }
      return cached;
    }
    const off = i < this.#table.length ? this.#table[i]! : 0;
    if (off === 0) return null;
    if (off % this.#cs !== 0) {
      throw this.#io.corrupt(`Refblock offset ${hex(off)} unaligned (reftable index: ${hex(i)})`);
    }
    if (off === 0 || Math.floor(off / this.#cs) >= this.endCluster) {
      throw this.#io.corrupt(
        `Refblock at offset ${hex(off)} (reftable index: ${hex(i)}) is outside the image file`,
        off,
        this.#cs,
      );
    }
    const buf = new Uint8Array(this.#cs);
    this.onBlockLoaded();
    await this.#io.read(off, buf);
    // Another caller may have loaded it meanwhile: keep theirs (it may be dirty).
    const again = this.#blocks.get(i);
    if (again) return again;
    await this.#insert(i, buf);
    return buf;
  }

  /** Caches block `i`, first evicting the least recently used (written back when dirty). */
  async #insert(i: number, buf: Uint8Array): Promise<void> {
    while (this.#blocks.size >= this.capacity && !this.#blocks.has(i)) {
      const [victim, block] = this.#blocks.entries().next().value!;
      if (this.#dirty.has(victim)) {
        this.#dirty.delete(victim);
        try {
          await this.#io.write("refcount block", this.#table[victim]!, block);
        } catch (e) {
          this.#dirty.add(victim);
          throw e;
        }
      }
      if (this.#blocks.get(victim) === block) {
        this.#blocks.delete(victim);
        if (victim === this.#mru) this.#mru = -1;
      }
    }
    this.#blocks.delete(i);
    this.#blocks.set(i, buf);
    this.#stamp(i);
    this.#mru = i;
  }

  /**
   * Drops the clean blocks not used since the previous call (QEMU's
   * `qcow2_cache_clean_unused`; loading is a use, so the first call drops nothing). Returns how
   * many it dropped. Call with the metadata lock held.
   */
  cleanUnused(): number {
    let dropped = 0;
    for (const i of this.#blocks.keys()) {
      if (this.#dirty.has(i) || (i < this.#used.length ? this.#used[i]! : 0) >= this.#gen) continue;
      this.#blocks.delete(i);
      if (i === this.#mru) this.#mru = -1;
      dropped++;
    }
    this.#gen++;
    return dropped;
  }

  /**
   * Holds `capacity` blocks (at least 4) from now on, dropping the least recently used clean
   * ones beyond it (dirty ones go at the next eviction, written first).
   */
  resize(capacity: number): void {
    this.capacity = Math.max(4, capacity);
    for (const i of this.#blocks.keys()) {
      if (this.#blocks.size <= this.capacity) break;
      if (this.#dirty.has(i)) continue;
      this.#blocks.delete(i);
      if (i === this.#mru) this.#mru = -1;
    }
  }

  /** How many refcount blocks are cached. */
  get cachedBlocks(): number {
    return this.#blocks.size;
  }

  /**
   * Forgets every cached block and takes `table` at `place` as the refcount table (after
   * check rewrote the structures on disk). Dirty blocks must have been written.
   */
  reload(table: number[], place: RefcountTablePlace, fileLength: number): void {
    if (this.#dirty.size > 0) throw new Error("refcount blocks were dirty on reload");
    this.#blocks.clear();
    this.#mru = -1;
    this.#table = table;
    this.#place = place;
    this.#freeHint = 0;
    this.reserved = new Set();
    this.endCluster = Math.ceil(fileLength / this.#cs);
    this.#map.clearRefblocks();
    for (const off of table) if (off !== 0) this.#map.addRefblock(off);
  }

  /**
   * The refcount of cluster `c` when its refcount block is cached (the cache's order left as
   * it is), else undefined: a walk over every cluster (`check`) need not wait once per
   * cluster.
   */
  peek(c: number): number | undefined {
    const i = Math.floor(c / this.entriesPerBlock);
    const block = this.#blocks.get(i);
    if (block === undefined) return undefined;
    this.#stamp(i);
    return this.#entry(block, c % this.entriesPerBlock);
  }

  /** The refcount of cluster `c` (0 past the table's reach). */
  async get(c: number): Promise<number> {
    const block = await this.#block(Math.floor(c / this.entriesPerBlock));
    return block ? this.#entry(block, c % this.entriesPerBlock) : 0;
  }

  /** Sets the refcount of cluster `c`, whose refcount block exists. */
  async #set(c: number, v: number): Promise<void> {
    const i = Math.floor(c / this.entriesPerBlock);
    const block = await this.#block(i);
    if (!block) throw new Error(`refcount block ${i} missing for cluster ${c}`);
    this.#setEntry(block, c % this.entriesPerBlock, v);
    this.#dirty.add(i);
  }

  /**
   * Adds `delta` to the refcounts of `count` clusters from `first`, all or none: a refcount
   * that would go below zero is corruption; one that would pass the maximum fails with EINVAL
   * (QEMU's `update_refcount`), and the image stays usable.
   */
  async update(first: number, count: number, delta: number): Promise<void> {
    for (let c = first; c < first + count; c++) {
      const old = await this.get(c);
      const v = old + delta;
      if (v < 0 || v > this.max) {
        for (let k = first; k < c; k++) await this.#set(k, (await this.get(k)) - delta);
        const what = `cluster ${c} (offset ${hex(c * this.#cs)}): ${old} ${delta < 0 ? "-" : "+"} ${
          Math.abs(delta)
        }`;
        if (v < 0) {
          throw this.#io.corrupt(`Invalid refcount update of ${what}`, c * this.#cs, this.#cs);
        }
        throw new BlockError(
          "EINVAL",
          `Refcount of ${what} would exceed the maximum of ${this.max} for ${this.#bits}-bit ` +
            "refcounts",
        );
      }
      await this.#set(c, v);
      if (v === 0) {
        if (c < this.#freeHint) this.#freeHint = c;
        this.onFreed(c);
      }
    }
  }

  /** The first run of `n` free clusters at or after the free hint. */
  async #findFree(n: number): Promise<number> {
    // Move the hint past the clusters in use at it, so that later searches do not scan them
    // again.
    while (this.#freeHint < this.endCluster && (await this.get(this.#freeHint)) !== 0) {
      this.#freeHint++;
    }
    let start = this.#freeHint;
    let c = start;
    while (c < start + n) {
      if (c >= this.endCluster) return start;
      if ((await this.get(c)) !== 0) start = c + 1;
      c++;
    }
    return start;
  }

  /**
   * `alloc` without waiting: the offset of `n` new contiguous clusters when the search and the
   * run stay within cached refcount blocks, else null (then call `alloc`). Call with the
   * metadata lock free (this takes the place of holding it).
   */
  allocCached(n: number): number | null {
    const E = this.entriesPerBlock;
    const blocks = this.#blocks;
    const inUse = (c: number): boolean | null => {
      const i = Math.floor(c / E);
      const b = blocks.get(i);
      if (b === undefined) return null;
      this.#stamp(i);
      return this.#entry(b, c % E) !== 0;
    };
    let start = this.#freeHint;
    for (; start < this.endCluster; start++) {
      const u = inUse(start);
      if (u === null) return null;
      if (!u) break;
    }
    this.#freeHint = start;
    for (let c = start; c < start + n; c++) {
      if (c < this.endCluster) {
        const u = inUse(c);
        if (u === null) return null;
        if (u) start = c + 1;
      } else if (!blocks.has(Math.floor(c / E))) return null;
    }
    for (let c = start; c < start + n; c++) {
      const i = Math.floor(c / E);
      this.#setEntry(blocks.get(i)!, c % E, 1);
      this.#dirty.add(i);
    }
    this.#freeHint = start + n;
    this.endCluster = Math.max(this.endCluster, start + n);
    return start * this.#cs;
  }

  /** Table indices in `[first, last]` that have no refcount block. */
  #missing(first: number, last: number): number[] {
    const out: number[] = [];
    for (let i = first; i <= last; i++) if (!this.#table[i]) out.push(i);
    return out;
  }

  /**
   * Allocates `n` contiguous clusters (refcount 1 each); returns the first one's offset.
   * Ranges of the run without a refcount block get new blocks placed just before the run,
   * counted by themselves or by existing blocks.
   */
  async alloc(n: number): Promise<number> {
    const E = this.entriesPerBlock;
    for (;;) {
      let k = 0;
      let start = await this.#findFree(n);
      let missing: number[] = [];
      for (;;) {
        missing = this.#missing(Math.floor(start / E), Math.floor((start + k + n - 1) / E));
        if (missing.length === k) break;
        k = missing.length;
        start = await this.#findFree(n + k);
      }
      const last = Math.floor((start + k + n - 1) / E);
      if (last >= this.#table.length) {
        await this.#growTable(last + 1);
        continue;
      }
      if (k > 0) await this.#placeBlocks(start, missing);
      for (let c = start + k; c < start + k + n; c++) await this.#set(c, 1);
      this.#freeHint = start + k + n;
      this.endCluster = Math.max(this.endCluster, start + k + n);
      return (start + k) * this.#cs;
    }
  }

  /**
   * New refcount blocks for table indices `missing`, at clusters `start`, `start+1`, ...
   * (free, and inside ranges that have or get a block). Each block is written and flushed
   * before the table entry naming it.
   */
  async #placeBlocks(start: number, missing: number[]): Promise<void> {
    const E = this.entriesPerBlock;
    const fresh = new Map<number, Uint8Array>();
    for (const i of missing) fresh.set(i, new Uint8Array(this.#cs));
    const k = missing.length;
    for (let c = start; c < start + k; c++) {
      const own = fresh.get(Math.floor(c / E));
      if (own) this.#setEntry(own, c % E, 1);
      else await this.#set(c, 1);
    }
    for (let j = 0; j < k; j++) {
      await this.#io.write("refcount block", (start + j) * this.#cs, fresh.get(missing[j]!)!);
    }
    await this.writeback();
    await this.#io.flush();
    const entry = new Uint8Array(8);
    for (let j = 0; j < k; j++) {
      const i = missing[j]!;
      const off = (start + j) * this.#cs;
      setU64(viewOf(entry), 0, off);
      await this.#io.write("refcount table", this.#place.offset + i * 8, entry);
      this.#table[i] = off;
      await this.#insert(i, fresh.get(i)!);
      this.#map.addRefblock(off);
    }
    this.endCluster = Math.max(this.endCluster, start + k);
  }

  /**
   * Moves the refcount table to the end of the image, at least `minEntries` long, with new
   * refcount blocks for every range the new area reaches that has none.
   */
  async #growTable(minEntries: number): Promise<void> {
    const E = this.entriesPerBlock;
    const cs = this.#cs;
    const old = this.#table;
    const area = this.endCluster;
    let nb = 0;
    let tc = 0;
    let fresh: number[] = [];
    for (;;) {
      const end = area + nb + tc;
      const entries = Math.max(minEntries, Math.ceil(end / E), old.length * 2);
      const tcNew = Math.ceil((entries * 8) / cs);
      const last = Math.ceil((area + nb + tcNew) / E);
      fresh = [];
      for (let i = Math.floor(area / E); i < last; i++) {
        if (i >= old.length || old[i] === 0) fresh.push(i);
      }
      if (fresh.length === nb && tcNew === tc) break;
      nb = fresh.length;
      tc = tcNew;
    }
    const table = old.slice();
    while (table.length < (tc * cs) / 8) table.push(0);
    const blocks = new Map<number, Uint8Array>();
    fresh.forEach((i, j) => {
      table[i] = (area + j) * cs;
      blocks.set(i, new Uint8Array(cs));
    });
    for (let c = area; c < area + nb + tc; c++) {
      const i = Math.floor(c / E);
      const nbBlock = blocks.get(i);
      if (nbBlock) this.#setEntry(nbBlock, c % E, 1);
      else await this.#set(c, 1);
    }
    for (const [i, b] of blocks) await this.#io.write("refcount block", table[i]!, b);
    await this.writeback();
    const buf = new Uint8Array(tc * cs);
    const view = viewOf(buf);
    table.forEach((off, i) => setU64(view, i * 8, off));
    const newOffset = (area + nb) * cs;
    await this.#io.write("refcount table", newOffset, buf);
    await this.#io.flush();
    const oldPlace = this.#place;
    this.#place = { offset: newOffset, clusters: tc };
    this.#map.setRange("refcount table", newOffset, tc * cs);
    await this.onTableMoved(this.#place);
    this.#table = table;
    for (const [i, b] of blocks) {
      await this.#insert(i, b);
      this.#map.addRefblock(table[i]!);
    }
    this.endCluster = area + nb + tc;
    await this.update(oldPlace.offset / cs, oldPlace.clusters, -1);
    await this.onOldTableFreed(oldPlace.offset / cs, oldPlace.clusters);
  }

  /** Writes every dirty refcount block; returns whether it wrote any. */
  async writeback(): Promise<boolean> {
    if (this.#dirty.size === 0) return false;
    const dirty = [...this.#dirty].sort((a, b) => a - b);
    for (const i of dirty) {
      this.#dirty.delete(i);
      try {
        await this.#io.write("refcount block", this.#table[i]!, this.#blocks.get(i)!);
      } catch (e) {
        this.#dirty.add(i);
        throw e;
      }
    }
    return true;
  }
}
