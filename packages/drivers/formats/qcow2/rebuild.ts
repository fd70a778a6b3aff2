/**
 * The in-memory refcount table of `check` (QEMU's IMRT) and the rebuild of the refcount
 * structure from it (iotest 108): new refcount blocks and a new refcount table past the end
 * of everything in use, written and flushed before the header points to them. The old
 * structure is then leaked, and check's leak repair frees it.
 *
 * @module
 */

import { setU64, viewOf } from "./format.ts";
import type { Qcow2Image } from "./image.ts";
import { type RefcountTablePlace, setRefcountEntry } from "./refcount.ts";

/** Reference counts computed from the metadata: one number per host cluster. */
export class Imrt {
  #a: Float64Array;
  #n: number;

  /** A table of `n` zero counts. */
  constructor(n: number) {
    this.#n = n;
    this.#a = new Float64Array(Math.max(16, n));
  }

  /** How many clusters it covers. */
  get length(): number {
    return this.#n;
  }

  /** Covers at least `n` clusters. */
  grow(n: number): void {
    if (n <= this.#n) return;
    if (n > this.#a.length) {
      const b = new Float64Array(Math.max(n, this.#a.length * 2));
      b.set(this.#a);
      this.#a = b;
    }
    this.#n = n;
  }

  /** The count of cluster `k` (0 past the end). */
  get(k: number): number {
    return k < this.#n ? this.#a[k]! : 0;
  }

  /** Sets the count of cluster `k`, growing the table. */
  set(k: number, v: number): void {
    this.grow(k + 1);
    this.#a[k] = v;
  }

  /** Forgets every count. */
  clear(): void {
    this.#a.fill(0);
  }
}

/** A refcount structure written to the image file, not yet named by the header. */
export interface RefcountLayout {
  /** The refcount table's entries. */
  table: number[];
  /** Where the table lies. */
  place: RefcountTablePlace;
  /** Where the structure ends: the least file length that holds it. */
  end: number;
}

/**
 * Writes a new refcount structure of `2^order`-bit entries holding `imrt` (extended by the new
 * structure's own clusters) past the end of everything in use, and flushes. The header and
 * the image's refcounts are left as they are. Call with `lock` held and the caches clean.
 */
export async function writeRefcountStructure(
  image: Qcow2Image,
  imrt: Imrt,
  order: number,
): Promise<RefcountLayout> {
  const cs = image.cs;
  const E = (cs * 8) / 2 ** order;
  const start = Math.max(imrt.length, Math.ceil(image.file.getLength() / cs));
  let blocks: number[] = [];
  let tableClusters = 0;
  for (;;) {
    const end = start + blocks.length + tableClusters;
    const used = new Set<number>();
    for (let c = 0; c < imrt.length; c++) if (imrt.get(c) > 0) used.add(Math.floor(c / E));
    for (let c = start; c < end; c++) used.add(Math.floor(c / E));
    const next = [...used].sort((a, b) => a - b);
    const entries = next.length === 0 ? 1 : next[next.length - 1]! + 1;
    const tc = Math.max(1, Math.ceil((entries * 8) / cs));
    if (next.length === blocks.length && tc === tableClusters) break;
    blocks = next;
    tableClusters = tc;
  }
  const total = blocks.length + tableClusters;
  for (let c = start; c < start + total; c++) imrt.set(c, 1);
  const table: number[] = new Array((tableClusters * cs) / 8).fill(0);
  blocks.forEach((i, j) => (table[i] = (start + j) * cs));
  for (let j = 0; j < blocks.length; j++) {
    const i = blocks[j]!;
    const buf = new Uint8Array(cs);
    for (let k = 0; k < E; k++) {
      const v = imrt.get(i * E + k);
      if (v > 0) setRefcountEntry(buf, k, order, v);
    }
    await image.write("refcount block", table[i]!, buf);
  }
  const tableOffset = (start + blocks.length) * cs;
  const raw = new Uint8Array(tableClusters * cs);
  table.forEach((off, i) => setU64(viewOf(raw), i * 8, off));
  await image.write("refcount table", tableOffset, raw);
  await image.flush();
  return {
    table,
    place: { offset: tableOffset, clusters: tableClusters },
    end: Math.max(image.file.getLength(), (start + total) * cs),
  };
}

/**
 * Writes a new refcount structure holding `imrt` and makes it the image's (check's rebuild).
 * Call with `lock` held and the caches clean.
 */
export async function rebuildRefcounts(image: Qcow2Image, imrt: Imrt): Promise<void> {
  const h = image.header;
  const layout = await writeRefcountStructure(image, imrt, h.refcountOrder);
  const { offset, clusters } = layout.place;
  const hdr = new Uint8Array(12);
  setU64(viewOf(hdr), 0, offset);
  viewOf(hdr).setUint32(8, clusters);
  await image.writeHeaderField(48, hdr);
  h.refcountTableOffset = offset;
  h.refcountTableClusters = clusters;
  image.map.setRange("refcount table", offset, clusters * image.cs);
  image.freeByte = 0;
  image.refcounts.reload(layout.table, layout.place, layout.end);
}
