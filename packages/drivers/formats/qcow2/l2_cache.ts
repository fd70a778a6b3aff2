/**
 * The L2 table cache: whole tables by host offset, least recently used first out, written
 * back lazily. Before any dirty table is written, `beforeWrite` runs (the refcount blocks
 * it depends on are written and the file flushed), so a table never reaches the disk
 * before the refcounts of the clusters it names.
 *
 * Callers hold the image's metadata mutex: a table returned by `get` stays valid until the
 * next call that may evict.
 *
 * `cleanUnused` (the `cache-clean-interval` timer, QEMU's `qcow2_cache_clean_unused`) drops
 * the clean tables nobody used since the previous cleaning. A use stamps the entry with the
 * current cleaning generation: one store, no allocation, on the lookup paths.
 *
 * @module
 */

/** One cached L2 table. */
interface Entry {
  table: Uint8Array;
  dirty: boolean;
  /** The cleaning generation of its last use. */
  used: number;
}

/** An LRU cache of L2 tables. */
export class L2Cache {
  /** How many tables the cache holds (a reopen may change it: `resize`). */
  capacity: number;
  readonly #entries = new Map<number, Entry>();
  /**
   * The key inserted last and still present (NaN: none): the most recently used table, which
   * a hit need not move. Moving a Map entry is a delete and a set, whose garbage cost more
   * than the lookup itself when `map` walked a fragmented image one extent at a time.
   */
  #mru = NaN;
  readonly #load: (offset: number) => Promise<Uint8Array>;
  readonly #store: (offset: number, table: Uint8Array) => Promise<void>;
  readonly #beforeWrite: () => Promise<void>;
  /** The cleaning generation: a table not used since the last cleaning has an older one. */
  #gen = 1;

  /** A cache of `capacity` tables (at least 2) over the given table I/O. */
  constructor(
    capacity: number,
    load: (offset: number) => Promise<Uint8Array>,
    store: (offset: number, table: Uint8Array) => Promise<void>,
    beforeWrite: () => Promise<void>,
  ) {
    this.capacity = Math.max(2, capacity);
    this.#load = load;
    this.#store = store;
    this.#beforeWrite = beforeWrite;
  }

  /** How many tables are cached. */
  get size(): number {
    return this.#entries.size;
  }

  /** Whether any table waits to be written. */
  get dirty(): boolean {
    for (const e of this.#entries.values()) if (e.dirty) return true;
    return false;
  }

  /** The table at `offset`, loaded when not cached. */
  async get(offset: number): Promise<Uint8Array> {
    const e = this.#entries.get(offset);
    if (e) {
      this.#use(offset, e);
      return e.table;
    }
    await this.#makeRoom();
    const table = await this.#load(offset);
    const again = this.#entries.get(offset);
    if (again) return again.table;
    this.#set(offset, { table, dirty: false, used: this.#gen });
    return table;
  }

  /** Puts a table (a new or copied one) into the cache. */
  async put(offset: number, table: Uint8Array, dirty: boolean): Promise<void> {
    if (!this.#entries.has(offset)) await this.#makeRoom();
    this.#delete(offset);
    this.#set(offset, { table, dirty, used: this.#gen });
  }

  /** Marks the cached table at `offset` as changed. */
  markDirty(offset: number): void {
    const e = this.#entries.get(offset);
    if (e) e.dirty = true;
  }

  /** Forgets every table; they must all be clean (after `flush`). */
  clear(): void {
    if (this.dirty) throw new Error("L2 tables were dirty when the cache was cleared");
    this.#entries.clear();
    this.#mru = NaN;
  }

  /**
   * The cached table at `offset` without waiting or reordering, or undefined. It counts as a
   * use for `cleanUnused`.
   */
  peek(offset: number): Uint8Array | undefined {
    const e = this.#entries.get(offset);
    if (e === undefined) return undefined;
    e.used = this.#gen;
    return e.table;
  }

  /** The cached table at `offset`, made most recently used, or undefined (no loading). */
  touch(offset: number): Uint8Array | undefined {
    const e = this.#entries.get(offset);
    if (!e) return undefined;
    this.#use(offset, e);
    return e.table;
  }

  /** Forgets the table at `offset` without writing it (it was freed). */
  drop(offset: number): void {
    this.#delete(offset);
  }

  /**
   * Drops the clean tables not used since the previous call (QEMU's
   * `qcow2_cache_clean_unused`): loading a table is a use, so the first call drops nothing.
   * Returns how many it dropped. Call with the metadata lock held.
   */
  cleanUnused(): number {
    let dropped = 0;
    for (const [offset, e] of this.#entries) {
      if (e.dirty || e.used >= this.#gen) continue;
      this.#delete(offset);
      dropped++;
    }
    this.#gen++;
    return dropped;
  }

  /**
   * Holds `capacity` tables (at least 2) from now on, dropping the least recently used clean
   * ones beyond it (dirty ones go at the next eviction, written first).
   */
  resize(capacity: number): void {
    this.capacity = Math.max(2, capacity);
    for (const [offset, e] of this.#entries) {
      if (this.#entries.size <= this.capacity) break;
      if (!e.dirty) this.#delete(offset);
    }
  }

  /** Makes `e`, cached at `offset`, the most recently used. */
  #use(offset: number, e: Entry): void {
    e.used = this.#gen;
    if (offset === this.#mru) return;
    this.#entries.delete(offset);
    this.#set(offset, e);
  }

  #set(offset: number, e: Entry): void {
    this.#entries.set(offset, e);
    this.#mru = offset;
  }

  #delete(offset: number): void {
    this.#entries.delete(offset);
    if (offset === this.#mru) this.#mru = NaN;
  }

  async #makeRoom(): Promise<void> {
    while (this.#entries.size >= this.capacity) {
      const [offset, victim] = this.#entries.entries().next().value!;
      if (victim.dirty) {
        await this.#beforeWrite();
        await this.#store(offset, victim.table);
        victim.dirty = false;
      }
      if (this.#entries.get(offset) === victim) this.#delete(offset);
    }
  }

  /** Writes every dirty table (after `beforeWrite`). */
  async flush(): Promise<void> {
    if (!this.dirty) return;
    await this.#beforeWrite();
    for (const [offset, e] of [...this.#entries]) {
      if (!e.dirty) continue;
      e.dirty = false;
      try {
        await this.#store(offset, e.table);
      } catch (err) {
        e.dirty = true;
        throw err;
      }
    }
  }
}
