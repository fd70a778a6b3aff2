/**
 * Walking an L1 table's tree (QEMU's `qcow2_update_snapshot_refcount`): add to the refcount
 * of every L2 table and every cluster it reaches, then set or clear the COPIED flags of the
 * L2 entries and of the L1 entries by the refcounts that result. Snapshot create (+1),
 * delete (-1) and apply (0, flags only) use it, on an image whose caches were emptied with
 * `quiesce` so that the tables on disk are the truth.
 *
 * @module
 */

import { compressedPlace } from "./compressed.ts";
import { COPIED_HI, entryOffset, setU64, viewOf } from "./format.ts";
import { classify } from "./extent.ts";
import type { Qcow2Image } from "./image.ts";

/** An L1 table in memory: L2 offsets and their COPIED flags. */
export interface L1Table {
  /** L2 table offsets (0: none). */
  offsets: number[];
  /** COPIED flags. */
  copied: boolean[];
}

/** Reads an L1 table of `size` entries at `offset`. */
export async function readL1(image: Qcow2Image, offset: number, size: number): Promise<L1Table> {
  const buf = new Uint8Array(size * 8);
  if (size > 0) await image.read(offset, buf);
  const v = viewOf(buf);
  const t: L1Table = { offsets: [], copied: [] };
  for (let i = 0; i < size; i++) {
    const hi = v.getUint32(i * 8);
    t.offsets.push(entryOffset(hi, v.getUint32(i * 8 + 4)));
    t.copied.push((hi & COPIED_HI) !== 0);
  }
  return t;
}

/** Serialises an L1 table (`size` entries, zero-padded). */
export function serializeL1(t: L1Table, size = t.offsets.length): Uint8Array {
  const buf = new Uint8Array(size * 8);
  const v = viewOf(buf);
  for (let i = 0; i < Math.min(size, t.offsets.length); i++) {
    const off = t.offsets[i]!;
    if (off === 0) continue;
    setU64(v, i * 8, off);
    if (t.copied[i]) buf[i * 8]! |= 0x80;
  }
  return buf;
}

/** The clusters a compressed L2 entry's data occupies: first cluster index and count. */
export function compressedClusters(
  hi: number,
  lo: number,
  clusterBits: number,
): { first: number; count: number } {
  const p = compressedPlace(hi, lo, clusterBits);
  const cs = 2 ** clusterBits;
  const first = Math.floor(p.sectorStart / cs);
  const last = Math.floor((p.offset + p.bytes - 1) / cs);
  return { first, count: last - first + 1 };
}

/** An L2 table to write back after its COPIED flags changed. */
interface ChangedTable {
  off: number;
  buf: Uint8Array;
}

/**
 * Adds `addend` to the refcounts of everything `l1` reaches and recomputes the COPIED flags
 * of its L2 entries (written to disk) and of `l1` itself (in memory; the caller writes it).
 * The refcounts reach the disk before the tables (QEMU's L2-after-refcount dependency): a
 * crash between leaves at most a COPIED flag clear on a cluster whose refcount is one, never
 * one set on a shared cluster; tables freed by the walk are not written. Clusters a negative
 * `addend` frees (a deleted snapshot's, the old tree of a snapshot applied) are discarded in
 * the file with `pass-discard-snapshot`, QEMU's discard type for them. When a refcount
 * would overflow (EINVAL), the increments made so far are undone and
 * nothing is written. Call with `lock` held, on a quiesced image.
 */
export async function adjustTree(image: Qcow2Image, l1: L1Table, addend: number): Promise<void> {
  const rc = image.refcounts;
  const done: [number, number][] = [];
  const copied = l1.copied.slice();
  let tables: ChangedTable[];
  try {
    tables = await walk(image, l1, addend, done);
  } catch (e) {
    copied.forEach((c, i) => (l1.copied[i] = c));
    if (!image.broken) {
      for (const [first, count] of done.reverse()) await rc.update(first, count, -addend);
    }
    throw e;
  }
  if (addend !== 0) {
    await rc.writeback();
    await image.flush();
  }
  for (const t of tables) {
    if ((await rc.get(t.off / image.cs)) > 0) await image.write("active L2 table", t.off, t.buf);
  }
  await image.flush();
  if (addend < 0 && image.passDiscard.snapshot) await image.frees.discardFreed(done);
}

/**
 * `adjustTree`'s walk in the caches: updates the refcounts (recording each update in `done`)
 * and the flags; returns the L2 tables whose entries' flags changed.
 */
async function walk(
  image: Qcow2Image,
  l1: L1Table,
  addend: number,
  done: [number, number][],
): Promise<ChangedTable[]> {
  const cs = image.cs;
  const bits = image.header.clusterBits;
  const rc = image.refcounts;
  const update = async (first: number, count: number) => {
    if (addend === 0) return;
    await rc.update(first, count, addend);
    done.push([first, count]);
  };
  const seen = new Set<number>();
  const tables: ChangedTable[] = [];
  for (let i = 0; i < l1.offsets.length; i++) {
    const l2Off = l1.offsets[i]!;
    if (l2Off === 0) continue;
    const buf = new Uint8Array(cs);
    await image.read(l2Off, buf);
    const v = viewOf(buf);
    let changed = false;
    const stride = image.l2Stride;
    for (let j = 0; j < image.l2Entries; j++) {
      const hi = v.getUint32(j * stride);
      const lo = v.getUint32(j * stride + 4);
      const kind = classify(hi, lo, image.kindMode);
      if (kind === "compressed") {
        const c = compressedClusters(hi, lo, bits);
        await update(c.first, c.count);
        continue;
      }
      if (kind !== "normal" && kind !== "zero-alloc") continue;
      const c = entryOffset(hi, lo) / cs;
      await update(c, 1);
      const one = (await rc.get(c)) === 1;
      if (one !== ((hi & COPIED_HI) !== 0)) {
        v.setUint32(j * stride, (one ? hi | COPIED_HI : hi & ~COPIED_HI) >>> 0);
        changed = true;
      }
    }
    if (changed && !seen.has(l2Off)) tables.push({ off: l2Off, buf });
    seen.add(l2Off);
    await update(l2Off / cs, 1);
    l1.copied[i] = (await rc.get(l2Off / cs)) === 1;
  }
  return tables;
}
