/**
 * `check` (QEMU's `qcow2_check_refcounts` and `qemu-img check`'s repair loop): rebuilds the
 * refcounts in memory from the header, the active and snapshot L1/L2 trees (data and
 * compressed clusters), the snapshot table, the refcount structures and the bitmaps, compares
 * them with the refcounts on disk, checks the COPIED flags, and with `leaks` or `all` repairs
 * what QEMU repairs (rebuilding the refcount structure when a refcount block is missing or
 * broken), clears the dirty and corrupt bits and checks again. Messages are QEMU's, in its
 * order.
 *
 * @module
 */

import { BlockError } from "@blockgraph/core";
import {
  AUTOCLEAR_BITMAPS,
  COPIED_HI,
  entryOffset,
  Ext,
  getU64,
  Incompat,
  viewOf,
} from "./format.ts";
import { classify } from "./extent.ts";
import type { Qcow2Image } from "./image.ts";
import { Imrt, rebuildRefcounts } from "./rebuild.ts";
import { compressedClusters, readL1 } from "./tree.ts";
import {
  type Counts,
  type Fix,
  type Qcow2CheckResult,
  type Qcow2RepairMode,
  zeroCounts,
} from "./check_result.ts";
import { luksHeaderRegion } from "./encryption.ts";

const L1_RESERVED_HI = 0x7f000000;
const L1_RESERVED_LO = 0x1ff;
const L2_STD_RESERVED_HI = 0x3f000000;
const L2_STD_RESERVED_LO = 0x1fe;

function hex64(hi: number, lo: number): string {
  return ((BigInt(hi >>> 0) << 32n) | BigInt(lo >>> 0)).toString(16);
}

/** One pass of QEMU's refcount check over an open image. */
class Pass {
  readonly image: Qcow2Image;
  readonly msgs: string[];
  res: Counts = zeroCounts();
  imrt: Imrt;
  rebuild = false;
  /** Why the check itself failed (QEMU's check returning an error), or null. */
  failure: string | null = null;
  highest = 0;

  constructor(image: Qcow2Image, msgs: string[]) {
    this.image = image;
    this.msgs = msgs;
    this.imrt = new Imrt(Math.ceil(image.file.getLength() / image.cs));
  }

  inc(offset: number, size: number): void {
    if (size <= 0) return;
    const cs = this.image.cs;
    if (offset + size - this.image.file.getLength() >= cs) {
      this.msgs.push(
        "ERROR: counting reference for region exceeding the end of the file by one cluster or " +
          `more: offset 0x${offset.toString(16)} size 0x${size.toString(16)}`,
      );
      this.res.corruptions++;
      return;
    }
    const max = this.image.refcounts.max;
    for (let k = Math.floor(offset / cs); k <= Math.floor((offset + size - 1) / cs); k++) {
      const v = this.imrt.get(k);
      if (v === max) {
        this.msgs.push(`ERROR: overflow cluster offset=0x${(k * cs).toString(16)}`);
        this.msgs.push(
          "Use qemu-img amend to increase the refcount entry width or qemu-img convert to " +
            "create a clean copy if the image cannot be opened for writing",
        );
        this.res.corruptions++;
        continue;
      }
      this.imrt.set(k, v + 1);
    }
  }

  /**
   * The refcount on disk, or null when its refcount block cannot be read; undefined when the
   * block must be loaded first (then `refcount` waits for it).
   */
  refcountNow(c: number): number | null | undefined {
    const rc = this.image.refcounts;
    const i = Math.floor(c / rc.entriesPerBlock);
    const off = i < rc.table.length ? rc.table[i]! : 0;
    if (off === 0) return 0;
    if (off % this.image.cs !== 0) return null;
    if (off + this.image.cs > this.image.file.getLength()) return 0;
    return rc.peek(c);
  }

  /** The refcount on disk, or null when its refcount block cannot be read. */
  async refcount(c: number): Promise<number | null> {
    const now = this.refcountNow(c);
    return now !== undefined ? now : await this.image.refcounts.get(c);
  }

  async l2(l2Off: number, active: boolean, fix: Fix): Promise<void> {
    const image = this.image;
    const cs = image.cs;
    const buf = new Uint8Array(cs);
    try {
      await image.read(l2Off, buf);
    } catch {
      this.msgs.push("ERROR: I/O error in check_refcounts_l2");
      this.res.checkErrors++;
      return;
    }
    const v = viewOf(buf);
    let next = 0;
    let dirty = false;
    const stride = image.l2Stride;
    for (let j = 0; j < image.l2Entries; j++) {
      const hi = v.getUint32(j * stride);
      const lo = v.getUint32(j * stride + 4);
      const kind = classify(hi, lo, image.kindMode);
      // The subcluster bitmap ("reads as zero" and "allocated" words), 0 without one.
      const zb = image.extL2 ? v.getUint32(j * stride + 8) : 0;
      const ab = image.extL2 ? v.getUint32(j * stride + 12) : 0;
      if (kind !== "compressed" && ((hi & L2_STD_RESERVED_HI) || (lo & L2_STD_RESERVED_LO))) {
        this.msgs.push(`ERROR found l2 entry with reserved bits set: ${hex64(hi, lo)}`);
        this.res.corruptions++;
      }
      if (kind === "compressed") {
        if (hi & COPIED_HI) {
          const c = hex64(hi & 0x3fffffff, lo);
          this.msgs.push(
            `ERROR: coffset=0x${c}: copied flag must never be set for compressed clusters`,
          );
          this.res.corruptions++;
        }
        if (image.external) {
          this.msgs.push(`ERROR compressed cluster ${j} with data file, entry=0x${hex64(hi, lo)}`);
          this.res.corruptions++;
          continue;
        }
        if (zb !== 0 || ab !== 0) {
          this.msgs.push(
            `ERROR compressed cluster ${j} with non-zero subcluster allocation bitmap, ` +
              `entry=0x${hex64(hi, lo)}`,
          );
          this.res.corruptions++;
          continue;
        }
        const cc = compressedClusters(hi & ~COPIED_HI, lo, image.header.clusterBits);
        this.inc(cc.first * cs, cc.count * cs);
        if (active) {
          this.res.allocated++;
          this.res.compressed++;
          this.res.fragmented++;
        }
        continue;
      }
      if (kind === "unallocated" && ab !== 0) {
        this.msgs.push("ERROR: Unallocated cluster has non-zero subcluster allocation map");
        this.res.corruptions++;
      }
      if (kind !== "normal" && kind !== "zero-alloc") continue;
      const off = entryOffset(hi, lo);
      if ((zb & ab) !== 0) {
        this.res.corruptions++;
        this.msgs.push(
          `ERROR offset=${
            off.toString(16)
          }: Allocated cluster has corrupted subcluster allocation bitmap`,
        );
      }
      if (off % cs !== 0) {
        this.res.corruptions++;
        if (kind === "zero-alloc") {
          this.msgs.push(
            `${fix.errors ? "Repairing" : "ERROR"} offset=${
              off.toString(16)
            }: Preallocated cluster is not properly aligned; L2 entry corrupted.`,
          );
          if (fix.errors) {
            v.setUint32(j * stride, 0);
            v.setUint32(j * stride + 4, 1);
            dirty = true;
            this.res.corruptions--;
            this.res.corruptionsFixed++;
            continue;
          }
        } else {
          this.msgs.push(
            `ERROR offset=${
              off.toString(16)
            }: Data cluster is not properly aligned; L2 entry corrupted.`,
          );
        }
      }
      if (active) {
        this.res.allocated++;
        if (next !== 0 && off !== next) this.res.fragmented++;
        next = off + cs;
      }
      // Clusters of an external data file have no refcounts.
      if (!image.external) this.inc(off, cs);
    }
    if (dirty) await image.write("active L2 table", l2Off, buf);
  }

  async l1(offset: number, size: number, active: boolean, fix: Fix): Promise<void> {
    this.inc(offset, size * 8);
    const raw = new Uint8Array(size * 8);
    if (size > 0) await this.image.read(offset, raw);
    const v = viewOf(raw);
    for (let i = 0; i < size; i++) {
      const hi = v.getUint32(i * 8);
      const lo = v.getUint32(i * 8 + 4);
      if ((hi & L1_RESERVED_HI) || (lo & L1_RESERVED_LO)) {
        this.msgs.push(`ERROR found L1 entry with reserved bits set: ${hex64(hi, lo)}`);
        this.res.corruptions++;
      }
      const l2Off = entryOffset(hi, lo);
      if (l2Off === 0) continue;
      this.inc(l2Off, this.image.cs);
      if (l2Off % this.image.cs !== 0) {
        this.msgs.push(
          `ERROR l2_offset=${l2Off.toString(16)}: Table is not cluster aligned; L1 entry corrupted`,
        );
        this.res.corruptions++;
      }
      await this.l2(l2Off, active, fix);
    }
  }

  async bitmaps(): Promise<void> {
    const h = this.image.header;
    if ((h.autoclear & BigInt(AUTOCLEAR_BITMAPS)) === 0n) return;
    const ext = h.extensions.find((e) => e.type === Ext.BITMAPS);
    if (!ext || ext.data.length < 24) return;
    const ev = viewOf(ext.data);
    const count = ev.getUint32(0);
    const dirSize = getU64(ev, 8);
    const dirOffset = getU64(ev, 16);
    this.inc(dirOffset, dirSize);
    const dir = new Uint8Array(dirSize);
    await this.image.read(dirOffset, dir);
    const dv = viewOf(dir);
    let pos = 0;
    for (let b = 0; b < count && pos + 24 <= dir.length; b++) {
      const tableOffset = getU64(dv, pos);
      const tableSize = dv.getUint32(pos + 8);
      const nameSize = dv.getUint16(pos + 18);
      const extra = dv.getUint32(pos + 20);
      this.inc(tableOffset, tableSize * 8);
      const table = new Uint8Array(tableSize * 8);
      await this.image.read(tableOffset, table);
      const tv = viewOf(table);
      for (let k = 0; k < tableSize; k++) {
        const off = entryOffset(tv.getUint32(k * 8), tv.getUint32(k * 8 + 4));
        if (off !== 0) this.inc(off, this.image.cs);
      }
      pos = Math.ceil((pos + 24 + extra + nameSize) / 8) * 8;
    }
  }

  async refblocks(fix: Fix): Promise<void> {
    const image = this.image;
    const cs = image.cs;
    const table = image.refcounts.table;
    for (let i = 0; i < table.length; i++) {
      const off = table[i]!;
      const c = Math.floor(off / cs);
      if (image.refcounts.reserved.has(i)) {
        this.msgs.push(`ERROR refcount table entry ${i} has reserved bits set`);
        this.res.corruptions++;
        this.rebuild = true;
        continue;
      }
      if (off % cs !== 0) {
        this.msgs.push(
          `ERROR refcount block ${i} is not cluster aligned; refcount table entry corrupted`,
        );
        this.res.corruptions++;
        this.rebuild = true;
        continue;
      }
      if (c >= this.imrt.length && off !== 0) {
        this.msgs.push(
          `${fix.errors ? "Repairing" : "ERROR"} refcount block ${i} is outside image`,
        );
        if (fix.errors) {
          await image.file.truncate(off + cs, false, "off");
          image.refcounts.endCluster = Math.max(image.refcounts.endCluster, c + 1);
          this.imrt.grow(c + 1);
          this.res.corruptionsFixed++;
          this.inc(off, cs);
        } else {
          this.res.corruptions++;
        }
        continue;
      }
      if (off !== 0) {
        this.inc(off, cs);
        if (this.imrt.get(c) !== 1) {
          this.msgs.push(`ERROR refcount block ${i} refcount=${this.imrt.get(c)}`);
          this.res.corruptions++;
          this.rebuild = true;
        }
      }
    }
  }

  /** QEMU's `calculate_refcounts`. */
  async calculate(fix: Fix): Promise<void> {
    const image = this.image;
    const h = image.header;
    this.inc(0, image.cs);
    await this.l1(h.l1TableOffset, h.l1Size, true, fix);
    for (const s of image.snapshots) await this.l1(s.l1TableOffset, s.l1Size, false, fix);
    this.inc(h.snapshotsOffset, image.snapshotsBytes);
    this.inc(h.refcountTableOffset, h.refcountTableClusters * image.cs);
    if (h.cryptMethod === 2) {
      const luks = luksHeaderRegion(h);
      this.inc(luks.offset, luks.length);
    }
    await this.bitmaps();
    await this.refblocks(fix);
  }

  /** QEMU's `compare_refcounts`. */
  async compare(fix: Fix): Promise<void> {
    this.highest = 0;
    for (let i = 0; i < this.imrt.length; i++) {
      let r1 = this.refcountNow(i);
      if (r1 === undefined) r1 = await this.refcount(i);
      if (r1 === null) {
        this.msgs.push(`Can't get refcount for cluster ${i}: Input/output error`);
        this.res.checkErrors++;
        continue;
      }
      const r2 = this.imrt.get(i);
      if (r1 > 0 || r2 > 0) this.highest = i;
      if (r1 === r2) continue;
      let fixing: "leaks" | "errors" | null = null;
      if (r1 === 0) this.rebuild = true;
      else if (r1 > r2 && fix.leaks) fixing = "leaks";
      else if (r1 < r2 && fix.errors) fixing = "errors";
      const word = fixing ? "Repairing" : r1 < r2 ? "ERROR" : "Leaked";
      this.msgs.push(`${word} cluster ${i} refcount=${r1} reference=${r2}`);
      if (fixing) {
        try {
          await this.image.refcounts.update(i, 1, r2 - r1);
          if (fixing === "leaks") this.res.leaksFixed++;
          else this.res.corruptionsFixed++;
          continue;
        } catch {
          // Counted below, as QEMU does when update_refcount fails.
        }
      }
      if (r1 < r2) this.res.corruptions++;
      else this.res.leaks++;
    }
    await this.image.refcounts.writeback();
  }

  /** QEMU's `check_oflag_copied` over the active tree. */
  async oflagCopied(fix: Fix): Promise<void> {
    const image = this.image;
    const repair = fix.errors ||
      (fix.leaks && !this.res.checkErrors && !this.res.corruptions && !this.res.leaks);
    const word = repair ? "Repairing" : "ERROR";
    const l1 = await readL1(image, image.header.l1TableOffset, image.header.l1Size);
    for (let i = 0; i < l1.offsets.length; i++) {
      const l2Off = l1.offsets[i]!;
      if (l2Off === 0) continue;
      const rc = await this.refcount(Math.floor(l2Off / image.cs));
      if (rc === null) continue;
      if ((rc === 1) !== l1.copied[i]) {
        this.res.corruptions++;
        const entry = hex64(
          Math.floor(l2Off / 0x100000000) | (l1.copied[i] ? COPIED_HI : 0),
          l2Off >>> 0,
        );
        this.msgs.push(
          `${word} OFLAG_COPIED L2 cluster: l1_index=${i} l1_entry=${entry} refcount=${rc}`,
        );
        if (repair) {
          image.l1Copied[i] = rc === 1;
          await image.writeL1Entry(i);
          this.res.corruptions--;
          this.res.corruptionsFixed++;
        }
      }
      const buf = new Uint8Array(image.cs);
      await image.read(l2Off, buf);
      const v = viewOf(buf);
      let dirty = 0;
      const stride = image.l2Stride;
      for (let j = 0; j < image.l2Entries; j++) {
        const hi = v.getUint32(j * stride);
        const lo = v.getUint32(j * stride + 4);
        const kind = classify(hi, lo, image.kindMode);
        if (kind !== "normal" && kind !== "zero-alloc") continue;
        const r = image.external
          ? 1
          : await this.refcount(Math.floor(entryOffset(hi, lo) / image.cs));
        if (r === null) continue;
        if ((r === 1) !== ((hi & COPIED_HI) !== 0)) {
          this.res.corruptions++;
          this.msgs.push(
            `${word} OFLAG_COPIED data cluster: l2_entry=${hex64(hi, lo)} refcount=${r}`,
          );
          if (repair) {
            v.setUint32(j * stride, (r === 1 ? hi | COPIED_HI : hi & ~COPIED_HI) >>> 0);
            dirty++;
          }
        }
      }
      if (dirty > 0) {
        await image.write("active L2 table", l2Off, buf);
        this.res.corruptions -= dirty;
        this.res.corruptionsFixed += dirty;
      }
    }
    await image.flush();
  }
}

/** QEMU's `qcow2_check_refcounts` with `fix`. Call with `lock` held on a quiesced image. */
async function checkRefcounts(image: Qcow2Image, fix: Fix, msgs: string[]): Promise<Pass> {
  const p = new Pass(image, msgs);
  await p.calculate(fix);
  const pre = { ...p.res };
  const none = { leaks: false, errors: false };
  await p.compare(none);
  if (p.rebuild && fix.errors) {
    const old = { ...p.res };
    msgs.push("Rebuilding refcount structure");
    await rebuildRefcounts(image, p.imrt);
    p.res.corruptions = 0;
    p.res.leaks = 0;
    p.rebuild = false;
    p.imrt = new Imrt(Math.ceil(image.file.getLength() / image.cs));
    await p.calculate(none);
    let fresh = 0;
    if (fix.leaks) {
      const saved = p.res;
      p.res = zeroCounts();
      await p.compare({ leaks: true, errors: false });
      if (p.rebuild) msgs.push("ERROR rebuilt refcount structure is still broken");
      fresh = p.res.leaks;
      p.res = saved;
    }
    if (p.res.corruptions < old.corruptions) {
      p.res.corruptionsFixed += old.corruptions - p.res.corruptions;
    }
    if (p.res.leaks < old.leaks) p.res.leaksFixed += old.leaks - p.res.leaks;
    p.res.leaks += fresh;
  } else if (fix.leaks || fix.errors) {
    if (p.rebuild) {
      // QEMU's qcow2_check_refcounts fails the check here (-EIO): no summary follows.
      msgs.push("ERROR need to rebuild refcount structures");
      p.res.checkErrors++;
      p.failure = "Input/output error";
      return p;
    }
    if (p.res.leaks || p.res.corruptions) {
      p.res = pre;
      await p.compare(fix);
    }
  }
  await p.oflagCopied(fix);
  return p;
}

/** Clears the incompatible bits in `mask` on disk (dirty, corrupt). */
async function clearBits(image: Qcow2Image, mask: number): Promise<void> {
  const h = image.header;
  if (h.version < 3 || (h.incompatible & BigInt(mask)) === 0n) return;
  h.incompatible &= ~BigInt(mask);
  const buf = new Uint8Array(8);
  viewOf(buf).setBigUint64(0, h.incompatible);
  await image.writeHeaderField(72, buf);
}

/** One `bdrv_check` of the image (QEMU's `qcow2_co_check_locked`). */
export async function checkOnce(
  image: Qcow2Image,
  mode: Qcow2RepairMode,
  msgs: string[],
): Promise<Qcow2CheckResult> {
  const fix: Fix = { leaks: mode !== "none", errors: mode === "all" };
  if ((fix.leaks || fix.errors) && !image.writable) {
    throw new BlockError("EACCES", "Image is read-only; repairs need it opened read/write");
  }
  if (image.writable) await image.quiesce();
  const p = await checkRefcounts(image, fix, msgs);
  const r = p.res;
  if ((fix.leaks || fix.errors) && r.checkErrors === 0 && r.corruptions === 0) {
    await clearBits(image, Incompat.DIRTY | Incompat.CORRUPT);
  }
  return {
    corruptions: r.corruptions,
    leaks: r.leaks,
    "check-errors": r.checkErrors,
    "corruptions-fixed": r.corruptionsFixed,
    "leaks-fixed": r.leaksFixed,
    "image-end-offset": (p.highest + 1) * image.cs,
    "total-clusters": Math.ceil(image.header.size / image.cs),
    "allocated-clusters": r.allocated,
    "fragmented-clusters": r.fragmented,
    "compressed-clusters": r.compressed,
    ...(p.failure !== null ? { failure: p.failure } : {}),
    messages: msgs,
  };
}

/**
 * `qemu-img check [-r leaks|all]`: checks, and after a repair that fixed anything prints
 * the summary and checks again; the result is the second check's with the first one's fixed
 * counts. Call with `lock` held.
 */
export async function checkImage(
  image: Qcow2Image,
  mode: Qcow2RepairMode,
): Promise<Qcow2CheckResult> {
  const msgs: string[] = [];
  const first = await checkOnce(image, mode, msgs);
  if (
    mode === "none" || first.failure !== undefined ||
    (first["corruptions-fixed"] === 0 && first["leaks-fixed"] === 0)
  ) {
    return first;
  }
  msgs.push(
    "The following inconsistencies were found and repaired:",
    "",
    `    ${first["leaks-fixed"]} leaked clusters`,
    `    ${first["corruptions-fixed"]} corruptions`,
    "",
    "Double checking the fixed image now...",
  );
  const second = await checkOnce(image, "none", msgs);
  second["leaks-fixed"] = first["leaks-fixed"];
  second["corruptions-fixed"] = first["corruptions-fixed"];
  return second;
}
