/**
 * The read fast path of qcow2: where a guest request lands in the data file, answered from
 * the cached L2 table without building an extent. Most random reads of an allocated image
 * take it; anything it does not answer goes through `lookupCached`/`lookup` and the extents.
 * {@link contiguousDataOffset} answers the same for a range over several clusters stored
 * one after another, for reads served as a data-file range (`preadHost`).
 *
 * @module
 */

import { COMPRESSED_HI, entryOffset, ZERO_LO } from "./format.ts";
import type { Qcow2Image } from "./image.ts";

/**
 * The host offset of guest `offset` when the `bytes` from it lie in one cluster that holds
 * data in the data file (standard L2 entries) and its L2 table is cached; -1 otherwise.
 * Unallocated, zero and compressed clusters, extended L2 entries and corrupt (unaligned)
 * offsets all answer -1, so the slow path handles (and reports) them.
 */
export function cachedDataOffset(image: Qcow2Image, offset: number, bytes: number): number {
  if (image.extL2) return -1;
  const cs = image.cs;
  const g = Math.floor(offset / cs);
  const inCluster = offset - g * cs;
  if (inCluster + bytes > cs) return -1;
  const l1i = Math.floor(g / image.l2Entries);
  const l2Off = l1i < image.l1.length ? image.l1[l1i]! : 0;
  if (l2Off === 0) return -1;
  const t = image.l2.peek(l2Off);
  if (t === undefined) return -1;
  const i = (g % image.l2Entries) * 8;
  const hi = ((t[i]! << 24) | (t[i + 1]! << 16) | (t[i + 2]! << 8) | t[i + 3]!) >>> 0;
  const lo = ((t[i + 4]! << 24) | (t[i + 5]! << 16) | (t[i + 6]! << 8) | t[i + 7]!) >>> 0;
  if ((hi & COMPRESSED_HI) !== 0 || (lo & ZERO_LO) !== 0) return -1;
  const base = entryOffset(hi, lo);
  if (base === 0 || base % cs !== 0) return -1;
  return base + inCluster;
}

/**
 * The host offset of guest `offset` when all `bytes` from it lie in data clusters (as
 * {@link cachedDataOffset} answers them: cached L2 tables, standard entries) stored one
 * after another in the data file, so that one data-file range holds the whole read; -1
 * otherwise. Images written in order (`img convert`, sequential writes) store most runs so.
 */
export function contiguousDataOffset(image: Qcow2Image, offset: number, bytes: number): number {
  const cs = image.cs;
  const firstLen = Math.min(bytes, cs - (offset % cs));
  const host = cachedDataOffset(image, offset, firstLen);
  if (host < 0) return -1;
  for (let done = firstLen; done < bytes; done += cs) {
    const n = Math.min(cs, bytes - done);
    if (cachedDataOffset(image, offset + done, n) !== host + done) return -1;
  }
  return host;
}
