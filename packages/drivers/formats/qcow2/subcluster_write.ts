/**
 * Writes to images with extended L2 entries (subclusters): a write allocates only the
 * subclusters it touches. It goes in place into a COPIED cluster's allocated subclusters;
 * otherwise, one cluster at a time and holding that cluster's claim, it writes the guest data
 * rounded out to whole subclusters — the partial subclusters at head and tail filled with what
 * they read before (backing file, zeros, a shared or compressed cluster) — into the cluster it
 * has (COPIED) or a new one, then sets the subclusters' "allocated" bits and clears their
 * "reads as zero" bits. A new cluster replacing a shared one also receives the old cluster's
 * allocated subclusters; one replacing a compressed cluster receives all of it.
 *
 * @module
 */

import { allocData, unallocData } from "./data_alloc.ts";
import { IoVector, type Node } from "@blockgraph/core";
import { decompressExtent } from "./allocating_write.ts";
import {
  classify,
  type ClusterKind,
  invalidBitmap,
  invalidEntry,
  subclusterKind,
} from "./extent.ts";
import { COPIED_HI, copiedEntry, entryOffset, subMask } from "./format.ts";
import type { Qcow2Image } from "./image.ts";

/** One L2 entry with its subcluster bitmap. */
interface Entry {
  hi: number;
  lo: number;
  zeroBits: number;
  allocBits: number;
  kind: ClusterKind;
  host: number;
}

/** Reads guest cluster `g`'s entry and checks its bitmap. Call with `lock` held. */
async function entryOf(image: Qcow2Image, g: number): Promise<Entry> {
  const [hi, lo, zeroBits, allocBits] = await image.entryAt(g);
  const kind = classify(hi, lo, image.kindMode);
  const why = invalidBitmap(kind, zeroBits, allocBits);
  if (why !== null) {
    const l1i = Math.floor(g / image.l2Entries);
    throw invalidEntry(image, why, image.l1[l1i] ?? 0, g % image.l2Entries);
  }
  return { hi, lo, zeroBits, allocBits, kind, host: kind === "normal" ? entryOffset(hi, lo) : 0 };
}

/** The number of trailing zero bits of a non-zero u32. */
function ctz(x: number): number {
  return 31 - Math.clz32(x & -x);
}

/**
 * Writes the first part of `[offset, offset + bytes)` that lies in one cluster; returns the
 * bytes done (0: it waited for another allocation in that cluster; call again).
 */
export async function subclusterWriteStep(
  image: Qcow2Image,
  backing: Node | null,
  offset: number,
  bytes: number,
  qiov: IoVector,
  qiovOffset: number,
): Promise<number> {
  const cs = image.cs;
  const g = Math.floor(offset / cs);
  const gStart = g * cs;
  const n = Math.min(bytes, gStart + cs - offset);
  // In place into allocated subclusters of a COPIED cluster: no metadata changes.
  const cached = image.lock.held ? null : image.lookupCached(offset, n);
  if (cached && cached.kind === "normal" && cached.copied) {
    const m = Math.min(n, cached.bytes);
    const first = Math.floor(cached.host / cs);
    const end = image.inflight.begin(first, 1);
    try {
      await image.writeData(cached.host, m, qiov, qiovOffset);
    } finally {
      end();
    }
    return m;
  }
  const busy = image.claims.busy(g, 1);
  if (busy) {
    await busy;
    return 0;
  }
  const release = image.claims.claim(g, 1);
  try {
    await allocateInCluster(image, backing, g, offset, n, qiov, qiovOffset);
  } finally {
    release();
  }
  return n;
}

/** The allocating part of a write within cluster `g`. Call holding `g`'s claim. */
async function allocateInCluster(
  image: Qcow2Image,
  backing: Node | null,
  g: number,
  offset: number,
  n: number,
  qiov: IoVector,
  qiovOffset: number,
): Promise<void> {
  const cs = image.cs;
  const sc = image.sc;
  const gStart = g * cs;
  const e = await image.lock.run(() => entryOf(image, g));
  const inPlace = e.kind === "normal" && (e.hi & COPIED_HI) !== 0;
  let s0 = Math.floor((offset - gStart) / sc);
  let s1 = Math.ceil((offset + n - gStart) / sc);
  if (!inPlace && e.kind === "normal" && e.allocBits !== 0) {
    // A new cluster for a shared one takes its allocated subclusters along.
    s0 = Math.min(s0, ctz(e.allocBits));
    s1 = Math.max(s1, 32 - Math.clz32(e.allocBits));
  }
  if (e.kind === "compressed") {
    s0 = 0;
    s1 = 32;
  }
  let from = gStart + s0 * sc;
  let to = gStart + s1 * sc;
  if (inPlace) {
    // Allocated partial subclusters keep their data where it is: no copy needed.
    if (e.allocBits & (1 << s0)) from = offset;
    if (e.allocBits & (1 << (s1 - 1))) to = offset + n;
  }
  if (!inPlace) await image.ensureL2(g, 1);
  const host = inPlace ? e.host : await allocData(image, g, 1);
  try {
    const parts = new IoVector();
    if (from < offset) parts.add(await oldContent(image, backing, e, from, offset));
    qiov.slices(qiovOffset, n, parts.iov);
    parts.size += n;
    if (to > offset + n) parts.add(await oldContent(image, backing, e, offset + n, to));
    const end = inPlace ? image.inflight.begin(Math.floor(host / cs), 1) : null;
    try {
      await image.writeData(host + (from - gStart), parts.size, parts, 0);
    } finally {
      end?.();
    }
  } catch (err) {
    if (!inPlace) await unallocData(image, host, 1);
    throw err;
  }
  const mask = subMask(s0, s1);
  await image.lock.run(async () => {
    const [hi, lo] = copiedEntry(host);
    await image.setEntry(g, hi, lo, e.zeroBits & ~mask, e.allocBits | mask);
    if (!inPlace && !image.external && e.kind !== "unallocated") {
      image.frees.release(e.hi, e.lo, "never");
    }
    await image.frees.commit();
  });
}

/** What guest bytes `[from, to)` of the cluster `e` describes read as: the COW source. */
async function oldContent(
  image: Qcow2Image,
  backing: Node | null,
  e: Entry,
  from: number,
  to: number,
): Promise<Uint8Array> {
  const cs = image.cs;
  const sc = image.sc;
  const buf = new Uint8Array(to - from);
  const gStart = Math.floor(from / cs) * cs;
  if (e.kind === "compressed") {
    const ext = { kind: e.kind, bytes: cs, host: 0, copied: false, hi: e.hi, lo: e.lo };
    buf.set((await decompressExtent(image, ext)).subarray(from - gStart, to - gStart));
    return buf;
  }
  // Runs of subclusters of one kind.
  for (let at = from; at < to;) {
    const s = Math.floor((at - gStart) / sc);
    const kind = subclusterKind(e.kind, e.zeroBits, e.allocBits, s);
    let end = Math.min(to, gStart + (s + 1) * sc);
    while (
      end < to &&
      subclusterKind(e.kind, e.zeroBits, e.allocBits, Math.floor((end - gStart) / sc)) === kind
    ) {
      end = Math.min(to, end + sc);
    }
    const part = buf.subarray(at - from, end - from);
    if (kind === "normal") await image.data.read(e.host + (at - gStart), part);
    else if ((kind === "unallocated" || kind === "unallocated-alloc") && backing) {
      await readBacking(backing, at, part);
    }
    at = end;
  }
  return buf;
}

/** Reads `buf` at guest `at` from the backing file; zeros past its end. */
async function readBacking(backing: Node, at: number, buf: Uint8Array): Promise<void> {
  const len = backing.getLength();
  if (at >= len) return;
  await backing.read(at, buf.subarray(0, Math.min(buf.length, len - at)));
}
