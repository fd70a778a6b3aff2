/**
 * The internal snapshot table: parsing with QEMU's checks, serialisation (QEMU's 24 bytes of
 * extra data, unknown extra data kept), and the list shape `img info` and `img snapshot -l`
 * show.
 *
 * @module
 */

import { BlockError, type Node } from "@blockgraph/core";
import { getU64, MAX_L1_BYTES, setU64, viewOf } from "./format.ts";

/** One internal snapshot as `img info` shows it (QEMU's SnapshotInfo field names). */
export interface Qcow2Snapshot {
  /** The snapshot's ID ("1", "2", ...). */
  id: string;
  /** The snapshot's name (tag); several snapshots may share one. */
  name: string;
  /** Bytes of VM state saved with the snapshot. */
  "vm-state-size": number;
  /** When it was taken: seconds since the epoch. */
  "date-sec": number;
  /** When it was taken: nanoseconds within the second. */
  "date-nsec": number;
  /** The guest clock at the snapshot, in nanoseconds. */
  "vm-clock-nsec": number;
  /** The instruction count at the snapshot (absent when the image has none recorded). */
  icount?: number;
}

/** A snapshot table entry as stored. */
export interface SnapshotEntry {
  /** Offset of the snapshot's L1 table. */
  l1TableOffset: number;
  /** Entries in that L1 table. */
  l1Size: number;
  /** The ID string. */
  id: string;
  /** The name string. */
  name: string;
  /** Seconds since the epoch. */
  dateSec: number;
  /** Nanoseconds. */
  dateNsec: number;
  /** Guest clock in nanoseconds. */
  vmClockNsec: number;
  /** VM state size in bytes. */
  vmStateSize: number;
  /** The virtual disk size when the snapshot was taken. */
  diskSize: number;
  /** The instruction count, or -1 for none. */
  icount: number;
  /** Extra data past the 24 bytes QEMU knows, kept as it is. */
  unknownExtra: Uint8Array;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();
/** The extra data QEMU writes: vm_state_size_large, disk_size, icount. */
const KNOWN_EXTRA = 24;
/** QEMU's limit on a snapshot entry's extra data. */
const MAX_EXTRA = 1024;

/** The list shape of `entries`. */
export function snapshotInfo(entries: readonly SnapshotEntry[]): Qcow2Snapshot[] {
  return entries.map((e) => {
    const s: Qcow2Snapshot = {
      id: e.id,
      name: e.name,
      "vm-state-size": e.vmStateSize,
      "date-sec": e.dateSec,
      "date-nsec": e.dateNsec,
      "vm-clock-nsec": e.vmClockNsec,
    };
    if (e.icount >= 0) s.icount = e.icount;
    return s;
  });
}

/**
 * Reads the snapshot table; returns its entries and its length in bytes. A snapshot's L1
 * table must be cluster aligned, within QEMU's 32 MiB limit and inside the file.
 */
export async function readSnapshotTable(
  file: Node,
  offset: number,
  count: number,
  clusterSize: number,
  version: number,
  diskSize: number,
): Promise<{ entries: SnapshotEntry[]; bytes: number }> {
  const entries: SnapshotEntry[] = [];
  let pos = offset;
  const fileLen = file.getLength();
  for (let i = 0; i < count; i++) {
    if (pos + 40 > fileLen) {
      throw new BlockError(
        "EINVAL",
        `Snapshot table entry ${i} is beyond the end of the image file`,
      );
    }
    const fixed = new Uint8Array(40);
    await file.read(pos, fixed);
    const v = viewOf(fixed);
    const idLen = v.getUint16(12);
    const nameLen = v.getUint16(14);
    const extraSize = v.getUint32(36);
    if (extraSize > MAX_EXTRA) {
      throw new BlockError("EFBIG", "Too much extra metadata in snapshot table entry " + i);
    }
    const rest = new Uint8Array(extraSize + idLen + nameLen);
    await file.read(pos + 40, rest);
    const rv = viewOf(rest);
    const e: SnapshotEntry = {
      l1TableOffset: getU64(v, 0),
      l1Size: v.getUint32(8),
      id: decoder.decode(rest.subarray(extraSize, extraSize + idLen)),
      name: decoder.decode(rest.subarray(extraSize + idLen)),
      dateSec: v.getUint32(16),
      dateNsec: v.getUint32(20),
      vmClockNsec: getU64(v, 24),
      vmStateSize: v.getUint32(32),
      diskSize,
      icount: -1,
      unknownExtra: rest.slice(Math.min(KNOWN_EXTRA, extraSize), extraSize),
    };
    if (extraSize >= 8) e.vmStateSize = getU64(rv, 0);
    if (extraSize >= 16) e.diskSize = getU64(rv, 8);
    else if (version >= 3) {
      throw new BlockError(
        "EINVAL",
        `Snapshot table entry ${i} lacks the disk size field (extra data of ${extraSize} bytes)`,
      );
    }
    if (extraSize >= 24 && rv.getUint32(16) !== 0xffffffff) e.icount = getU64(rv, 16);
    if (e.l1TableOffset % clusterSize !== 0) {
      throw new BlockError("EINVAL", "Snapshot L1 table offset invalid");
    }
    if (e.l1Size > MAX_L1_BYTES / 8) throw new BlockError("EFBIG", "Snapshot L1 table too large");
    if (e.l1TableOffset + e.l1Size * 8 > fileLen) {
      throw new BlockError(
        "EINVAL",
        `Snapshot L1 table of snapshot ${e.id} at offset 0x${e.l1TableOffset.toString(16)} ` +
          `(${e.l1Size * 8} bytes) is beyond the end of the image file (${fileLen} bytes)`,
      );
    }
    entries.push(e);
    pos += 40 + extraSize + idLen + nameLen;
    pos = Math.ceil(pos / 8) * 8;
  }
  return { entries, bytes: pos - offset };
}

/**
 * Serialises the snapshot table as QEMU writes it: each entry starts 8-byte aligned, and the
 * table ends right after the last entry's name (QEMU's qcow2_write_snapshots writes no
 * padding after it).
 */
export function serializeSnapshotTable(entries: readonly SnapshotEntry[]): Uint8Array {
  const parts: Uint8Array[] = [];
  let total = 0;
  for (const e of entries) {
    const id = encoder.encode(e.id);
    const name = encoder.encode(e.name);
    const extraSize = KNOWN_EXTRA + e.unknownExtra.length;
    const len = Math.ceil((40 + extraSize + id.length + name.length) / 8) * 8;
    const buf = new Uint8Array(len);
    const v = viewOf(buf);
    setU64(v, 0, e.l1TableOffset);
    v.setUint32(8, e.l1Size);
    v.setUint16(12, id.length);
    v.setUint16(14, name.length);
    v.setUint32(16, e.dateSec);
    v.setUint32(20, e.dateNsec);
    setU64(v, 24, e.vmClockNsec);
    v.setUint32(32, e.vmStateSize >>> 0);
    v.setUint32(36, extraSize);
    setU64(v, 40, e.vmStateSize);
    setU64(v, 48, e.diskSize);
    if (e.icount < 0) v.setBigUint64(56, 0xffffffffffffffffn);
    else setU64(v, 56, e.icount);
    buf.set(e.unknownExtra, 64);
    buf.set(id, 40 + extraSize);
    buf.set(name, 40 + extraSize + id.length);
    parts.push(buf);
    total += len;
  }
  const last = entries.at(-1);
  if (last !== undefined) {
    const unpadded = 40 + KNOWN_EXTRA + last.unknownExtra.length +
      encoder.encode(last.id).length + encoder.encode(last.name).length;
    total -= parts.at(-1)!.length - unpadded;
  }
  const out = new Uint8Array(total);
  let pos = 0;
  for (const p of parts) {
    out.set(p.subarray(0, Math.min(p.length, total - pos)), pos);
    pos += p.length;
  }
  return out;
}

/** The index of the snapshot whose ID is `key`, else the first whose name is `key`, or -1. */
export function findSnapshot(entries: readonly SnapshotEntry[], key: string): number {
  const byId = entries.findIndex((e) => e.id === key);
  return byId >= 0 ? byId : entries.findIndex((e) => e.name === key);
}
