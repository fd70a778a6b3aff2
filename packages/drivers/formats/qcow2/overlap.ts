/**
 * Overlap checks: where the metadata of an image lies, so that no write (metadata or guest
 * data) lands on a structure it must not touch. Covers QEMU's "cached" template: the
 * header, the active L1 table, the refcount table, every refcount block, every active L2
 * table, the snapshot table, the snapshots' L1 tables and the bitmap directory, and beyond
 * QEMU, a LUKS image's crypto header (its key material); and, in the
 * `all` template, the snapshots' L2 tables (QEMU reads the snapshots' L1 tables at every check;
 * here they are read when the check is switched on and when the snapshots change:
 * `mapInactiveL2` in snapshot.ts). The node's `overlap-check` option
 * (runtime_options.ts) turns the check of each kind of structure on or off (`mask`).
 *
 * @module
 */

import { Overlap } from "./runtime_options.ts";

/** What a write to the image file carries. */
export type WriteKind =
  | "data"
  | "qcow2_header"
  | "active L1 table"
  | "active L2 table"
  | "refcount table"
  | "refcount block"
  | "snapshot table"
  | "inactive L1 table"
  | "bitmap directory"
  | "crypto header";

interface Range {
  name: string;
  /** The structure's {@link Overlap} bit. */
  bit: number;
  start: number;
  end: number;
}

/** The {@link Overlap} bit of each structure a range names. */
const BITS: Readonly<Record<string, number>> = {
  "qcow2_header": Overlap.MAIN_HEADER,
  "active L1 table": Overlap.ACTIVE_L1,
  "refcount table": Overlap.REFCOUNT_TABLE,
  "snapshot table": Overlap.SNAPSHOT_TABLE,
  "inactive L1 table": Overlap.INACTIVE_L1,
  "bitmap directory": Overlap.BITMAP_DIRECTORY,
  // QEMU has no overlap-check bit for a LUKS image's key material (nor checks it): it is
  // checked with the main header, so that no write can destroy the key.
  "crypto header": Overlap.MAIN_HEADER,
};

function bitOf(name: string): number {
  return BITS[name] ?? 0;
}

/** The metadata layout of an open image, kept current as structures move. */
export class MetadataMap {
  readonly #cs: number;
  readonly #clusterBits: number;
  /** Fixed-position structures: header, L1, refcount table, snapshot table and L1s. */
  #ranges: Range[] = [];
  /** Cluster indices of active L2 tables. */
  readonly #l2 = new Set<number>();
  /** Cluster indices of refcount blocks. */
  readonly #refblocks = new Set<number>();
  /** Cluster indices of the snapshots' L2 tables (kept only while the check is on). */
  #inactiveL2 = new Set<number>();
  /**
   * The structures `check` protects, as {@link Overlap} bits (QEMU's `overlap_check`); the
   * default is QEMU's "cached" template.
   */
  mask: number = Overlap.MAIN_HEADER | Overlap.ACTIVE_L1 | Overlap.ACTIVE_L2 |
    Overlap.REFCOUNT_TABLE | Overlap.REFCOUNT_BLOCK | Overlap.SNAPSHOT_TABLE |
    Overlap.INACTIVE_L1 | Overlap.BITMAP_DIRECTORY;

  /** An empty map for clusters of `2^clusterBits` bytes. */
  constructor(clusterBits: number) {
    this.#clusterBits = clusterBits;
    this.#cs = 2 ** clusterBits;
  }

  /** Replaces the range called `name` (or adds it); a size of 0 removes it. */
  setRange(name: string, start: number, size: number): void {
    this.#ranges = this.#ranges.filter((r) => r.name !== name);
    if (size > 0) this.#ranges.push({ name, bit: bitOf(name), start, end: start + size });
  }

  /** Adds a range without replacing others of the same name (inactive L1 tables). */
  addRange(name: string, start: number, size: number): void {
    if (size > 0) this.#ranges.push({ name, bit: bitOf(name), start, end: start + size });
  }

  /** Records an active L2 table at `offset` (or with `present` false forgets it). */
  setL2(offset: number, present: boolean): void {
    const c = offset / this.#cs;
    if (present) this.#l2.add(c);
    else this.#l2.delete(c);
  }

  /** Removes every range called `name` (inactive L1 tables when snapshots change). */
  clearRanges(name: string): void {
    this.#ranges = this.#ranges.filter((r) => r.name !== name);
  }

  /** Forgets every refcount block (the refcount structure was rebuilt). */
  clearRefblocks(): void {
    this.#refblocks.clear();
  }

  /** Replaces the snapshots' L2 tables, as cluster indices. */
  setInactiveL2(clusters: Iterable<number>): void {
    this.#inactiveL2 = new Set(clusters);
  }

  /** Records a refcount block at `offset`. */
  addRefblock(offset: number): void {
    this.#refblocks.add(offset / this.#cs);
  }

  /** Whether `offset` is a known refcount block. */
  isRefblock(offset: number): boolean {
    return this.#refblocks.has(offset / this.#cs);
  }

  /**
   * The name of the metadata structure a write of `size` bytes at `offset` would hit, or
   * null. A write of `kind` to its own structure (an L2 table at its own offset) is allowed,
   * and structures whose bit `mask` leaves out are not checked.
   */
  check(kind: WriteKind, offset: number, size: number): string | null {
    const mask = this.mask;
    if (mask === 0) return null;
    const end = offset + size;
    for (const r of this.#ranges) {
      if (r.name === kind || (mask & r.bit) === 0) continue;
      if (offset < r.end && r.start < end) return r.name;
    }
    const l2 = kind !== "active L2 table" && (mask & Overlap.ACTIVE_L2) !== 0;
    const rb = kind !== "refcount block" && (mask & Overlap.REFCOUNT_BLOCK) !== 0;
    const first = Math.floor(offset / this.#cs);
    const last = Math.floor((end - 1) / this.#cs);
    // QEMU's order: active structures first, inactive L2 tables last.
    const hit = this.#checkClusters(first, last, l2, rb);
    if (hit !== null || (mask & Overlap.INACTIVE_L2) === 0) return hit;
    return inClusters(this.#inactiveL2, first, last) ? "inactive L2 table" : null;
  }

  /** The active L2 table (`l2`) or refcount block (`rb`) among clusters `first..last`. */
  #checkClusters(first: number, last: number, l2: boolean, rb: boolean): string | null {
    if (!l2 && !rb) return null;
    if (last - first > this.#l2.size + this.#refblocks.size) {
      if (l2 && inClusters(this.#l2, first, last)) return "active L2 table";
      if (rb && inClusters(this.#refblocks, first, last)) return "refcount block";
      return null;
    }
    for (let c = first; c <= last; c++) {
      if (l2 && this.#l2.has(c)) return "active L2 table";
      if (rb && this.#refblocks.has(c)) return "refcount block";
    }
    return null;
  }

  /** The cluster size in bits (for callers that build ranges). */
  get clusterBits(): number {
    return this.#clusterBits;
  }
}

/**
 * Whether `set` holds a cluster index in `first..last`: looked up one by one for a short range,
 * the set walked when the range is longer than the set.
 */
function inClusters(set: ReadonlySet<number>, first: number, last: number): boolean {
  if (set.size === 0) return false;
  if (last - first > set.size) {
    for (const c of set) if (c >= first && c <= last) return true;
    return false;
  }
  for (let c = first; c <= last; c++) if (set.has(c)) return true;
  return false;
}
