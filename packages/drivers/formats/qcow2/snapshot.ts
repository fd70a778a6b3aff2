/**
 * Internal snapshots with QEMU's semantics: create copies the active L1 table and adds one to
 * the refcount of everything it reaches; apply makes a snapshot's L1 table the active one
 * (raising its tree, lowering the old one) and recomputes the COPIED flags; delete lowers the
 * snapshot's tree and frees its L1 table.
 *
 * Crash ordering: refcounts are raised (and flushed) before the snapshot table names the new
 * snapshot, and a deleted snapshot leaves the table (flushed) before its refcounts drop, so a
 * crash leaves at most leaked clusters.
 *
 * @module
 */

import { BlockError } from "@blockgraph/core";
import { MAX_L1_BYTES, MAX_SNAPSHOTS, setU64, viewOf } from "./format.ts";
import { validateTable } from "./header.ts";
import type { Qcow2Image } from "./image.ts";
import { Overlap } from "./runtime_options.ts";
import { growL1, truncateImage } from "./resize.ts";
import { findSnapshot, serializeSnapshotTable, type SnapshotEntry } from "./snapshot_table.ts";
import { adjustTree, type L1Table, readL1, serializeL1 } from "./tree.ts";

/**
 * Records the snapshots' L2 tables in the overlap map when its `inactive-l2` check is on (the
 * `all` template), reading every snapshot's L1 table; otherwise forgets them. `mask` is the
 * check's (a reopen passes the one it is about to apply).
 */
export async function inactiveL2Clusters(
  image: Qcow2Image,
  mask: number = image.map.mask,
): Promise<number[]> {
  const out: number[] = [];
  if ((mask & Overlap.INACTIVE_L2) === 0) return out;
  for (const s of image.snapshots) {
    const t = await readL1(image, s.l1TableOffset, s.l1Size);
    for (const off of t.offsets) if (off !== 0) out.push(Math.floor(off / image.cs));
  }
  return out;
}

/** Records the snapshot table's place and the snapshots' L1 tables in the overlap map. */
export function mapSnapshots(image: Qcow2Image): void {
  image.map.setRange("snapshot table", image.header.snapshotsOffset, image.snapshotsBytes);
  image.map.clearRanges("inactive L1 table");
  for (const s of image.snapshots) {
    image.map.addRange("inactive L1 table", s.l1TableOffset, s.l1Size * 8);
  }
}

/**
 * Writes `entries` as a new snapshot table in newly allocated clusters, points the header to
 * it, then frees the old table (QEMU's `qcow2_write_snapshots`).
 */
export async function writeSnapshotTable(
  image: Qcow2Image,
  entries: SnapshotEntry[],
): Promise<void> {
  const cs = image.cs;
  const h = image.header;
  const data = serializeSnapshotTable(entries);
  let offset = 0;
  if (data.length > 0) {
    offset = await image.refcounts.alloc(Math.ceil(data.length / cs));
    await image.refcounts.writeback();
    await image.write("snapshot table", offset, data);
  }
  await image.flush();
  const buf = new Uint8Array(12);
  viewOf(buf).setUint32(0, entries.length);
  setU64(viewOf(buf), 4, offset);
  await image.writeHeaderField(60, buf);
  const old = { offset: h.snapshotsOffset, bytes: image.snapshotsBytes };
  h.nbSnapshots = entries.length;
  h.snapshotsOffset = offset;
  image.snapshots = entries;
  image.snapshotsBytes = data.length;
  mapSnapshots(image);
  image.map.setInactiveL2(await inactiveL2Clusters(image));
  if (old.bytes > 0) {
    // Freed with a discard to the file, as QEMU's pass-discard-snapshot (on by default).
    image.frees.add(old.offset, Math.ceil(old.bytes / cs), "snapshot");
    await image.frees.commit();
    await image.refcounts.writeback();
  }
}

/** The active L1 table as an {@link L1Table} sharing the image's arrays. */
function activeL1(image: Qcow2Image): L1Table {
  return { offsets: image.l1, copied: image.l1Copied };
}

/** Writes the whole active L1 table and flushes. */
async function writeActiveL1(image: Qcow2Image): Promise<void> {
  await image.write("active L1 table", image.header.l1TableOffset, serializeL1(activeL1(image)));
  await image.flush();
}

function refuseExternal(image: Qcow2Image): void {
  if (!image.writable) throw new BlockError("EACCES", "Image is read-only");
  if (image.broken) throw image.brokenError();
}

/** QEMU's `qcow2_snapshot_create` for `qemu-img snapshot -c name`. Call with `lock` held. */
export async function createSnapshot(image: Qcow2Image, name: string): Promise<void> {
  refuseExternal(image);
  if (image.snapshots.length >= MAX_SNAPSHOTS) {
    throw new BlockError("EFBIG", "Maximum number of snapshots reached");
  }
  await image.quiesce();
  let max = 0;
  for (const s of image.snapshots) max = Math.max(max, Number.parseInt(s.id, 10) || 0);
  const cs = image.cs;
  const l1Size = image.l1.length;
  let l1Offset = 0;
  if (l1Size > 0) {
    l1Offset = await image.refcounts.alloc(Math.ceil((l1Size * 8) / cs));
    await image.write("inactive L1 table", l1Offset, serializeL1(activeL1(image)));
  }
  try {
    await adjustTree(image, activeL1(image), 1);
  } catch (e) {
    if (l1Size > 0 && !image.broken) {
      await image.refcounts.update(l1Offset / cs, Math.ceil((l1Size * 8) / cs), -1);
    }
    throw e;
  }
  await writeActiveL1(image);
  const now = Date.now();
  const entry: SnapshotEntry = {
    l1TableOffset: l1Offset,
    l1Size,
    id: String(max + 1),
    name,
    dateSec: Math.floor(now / 1000),
    dateNsec: (now % 1000) * 1e6,
    vmClockNsec: 0,
    vmStateSize: 0,
    diskSize: image.header.size,
    icount: 0,
    unknownExtra: new Uint8Array(0),
  };
  await writeSnapshotTable(image, [...image.snapshots, entry]);
}

/** QEMU's `qcow2_snapshot_goto` for `qemu-img snapshot -a`. Call with `lock` held. */
export async function applySnapshot(image: Qcow2Image, key: string): Promise<void> {
  refuseExternal(image);
  const idx = findSnapshot(image.snapshots, key);
  if (idx < 0) {
    throw new BlockError("ENOENT", "Failed to load snapshot: No such file or directory");
  }
  const sn = image.snapshots[idx]!;
  await image.quiesce();
  if (sn.diskSize !== image.header.size) await truncateImage(image, sn.diskSize, "off");
  if (sn.l1Size > image.l1.length) await growL1(image, sn.l1Size);
  const fresh = await readL1(image, sn.l1TableOffset, sn.l1Size);
  while (fresh.offsets.length < image.l1.length) {
    fresh.offsets.push(0);
    fresh.copied.push(false);
  }
  await adjustTree(image, fresh, 1);
  // The snapshot still names every table: none is COPIED until the old tree is dropped.
  fresh.copied.fill(false);
  await image.write("active L1 table", image.header.l1TableOffset, serializeL1(fresh));
  await image.flush();
  const old: L1Table = { offsets: image.l1.slice(), copied: image.l1Copied.slice() };
  for (let i = 0; i < image.l1.length; i++) {
    image.map.setL2(old.offsets[i]!, false);
    image.l1[i] = fresh.offsets[i]!;
    image.l1Copied[i] = fresh.copied[i]!;
  }
  for (const off of image.l1) if (off !== 0) image.map.setL2(off, true);
  await adjustTree(image, old, -1);
  await adjustTree(image, activeL1(image), 0);
  await writeActiveL1(image);
}

/** QEMU's `qcow2_snapshot_delete` for `qemu-img snapshot -d`. Call with `lock` held. */
export async function deleteSnapshot(image: Qcow2Image, key: string): Promise<void> {
  refuseExternal(image);
  // By name only, the first that has it: qemu-img 7.2 finds the snapshot to delete with
  // `bdrv_snapshot_find`, which does not match IDs (`-a` does).
  const idx = image.snapshots.findIndex((e) => e.name === key);
  if (idx < 0) throw new BlockError("ENOENT", "snapshot not found");
  await image.quiesce();
  const sn = image.snapshots[idx]!;
  const rest = image.snapshots.filter((_, i) => i !== idx);
  await writeSnapshotTable(image, rest);
  const l1 = await readL1(image, sn.l1TableOffset, sn.l1Size);
  await adjustTree(image, l1, -1);
  if (sn.l1Size > 0) {
    // Freed with a discard to the file, as QEMU's pass-discard-snapshot (on by default).
    image.frees.add(sn.l1TableOffset, Math.ceil((sn.l1Size * 8) / image.cs), "snapshot");
    await image.frees.commit();
    await image.refcounts.writeback();
  }
  await adjustTree(image, activeL1(image), 0);
  await writeActiveL1(image);
}

/**
 * The snapshot `id` and `name` pick (both given: one snapshot must have both), QEMU's
 * `find_snapshot_by_id_and_name`; -1 when none does.
 */
export function findSnapshotByIdAndName(
  entries: readonly SnapshotEntry[],
  id: string | undefined,
  name: string | undefined,
): number {
  return entries.findIndex((e) =>
    (id === undefined || e.id === id) && (name === undefined || e.name === name)
  );
}

/**
 * QEMU's `qcow2_snapshot_load_tmp`: a read-only image reads what the snapshot `id`/`name`
 * holds from now on (its L1 table replaces the active one in memory; the disk size stays).
 * Nothing is written: the image must be read-only.
 */
export async function loadSnapshotTemporarily(
  image: Qcow2Image,
  id: string | undefined,
  name: string | undefined,
): Promise<void> {
  if (image.writable) throw new BlockError("EINVAL", "Device is not readonly");
  if (id === undefined && name === undefined) {
    throw new BlockError("EINVAL", "snapshot_id and name are both NULL");
  }
  const idx = findSnapshotByIdAndName(image.snapshots, id, name);
  if (idx < 0) throw new BlockError("ENOENT", "Can't find snapshot");
  const sn = image.snapshots[idx]!;
  validateTable(sn.l1TableOffset, sn.l1Size, 8, MAX_L1_BYTES, image.cs, "Snapshot L1 table");
  const l1 = await readL1(image, sn.l1TableOffset, sn.l1Size);
  image.l1.length = 0;
  image.l1.push(...l1.offsets);
  image.l1Copied.length = 0;
  image.l1Copied.push(...l1.offsets.map(() => false));
}
