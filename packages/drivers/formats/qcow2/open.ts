/**
 * Opening a qcow2 image: the header and its checks, the tables it points to (inside the
 * file, clear of the header), the snapshot table's layout for the overlap checks, the L2
 * cache size, and the backing file.
 *
 * @module
 */

import {
  BlockError,
  ChildRole,
  type Node,
  type OpenContext,
  type OptionValues,
} from "@blockgraph/core";
import { getU64, hex, Incompat, setU64, viewOf } from "./format.ts";
import { backingFormat, parseHeader, type Qcow2Header } from "./header.ts";
import { Qcow2Image } from "./image.ts";
import { Qcow2Instance } from "./instance.ts";

/** The L2 cache covers at most this much guest data by default (1 TiB). */
const DEFAULT_L2_COVERAGE = 2 ** 40;

/** Reads the first cluster of `file` (zeros past its end). */
async function readFirstCluster(file: Node): Promise<Uint8Array> {
  const probe = new Uint8Array(512);
  await file.read(0, probe);
  const bits = viewOf(probe).getUint32(20);
  if (bits < 9 || bits > 21) return probe;
  const cluster = new Uint8Array(2 ** bits);
  await file.read(0, cluster);
  return cluster;
}

/** Checks that a table lies inside the file and clear of the header. */
function checkInside(
  name: string,
  offset: number,
  bytes: number,
  cs: number,
  fileLen: number,
): void {
  if (bytes === 0) return;
  if (offset < cs) {
    throw new BlockError("EINVAL", `${name} at offset ${hex(offset)} overlaps the qcow2 header`);
  }
  if (offset + bytes > fileLen) {
    throw new BlockError(
      "EINVAL",
      `${name} at offset ${hex(offset)} (${bytes} bytes) is beyond the end of the image file ` +
        `(${fileLen} bytes)`,
    );
  }
}

/** Reads the refcount table's entries. */
async function readRefTable(file: Node, h: Qcow2Header): Promise<number[]> {
  const cs = 2 ** h.clusterBits;
  const buf = new Uint8Array(h.refcountTableClusters * cs);
  await file.read(h.refcountTableOffset, buf);
  const view = viewOf(buf);
  const out: number[] = [];
  for (let i = 0; i < buf.length / 8; i++) out.push(getU64(view, i * 8) & ~0x1ff);
  return out;
}

/** Where each snapshot's L1 table lies, and how long the snapshot table is. */
async function readSnapshotLayout(
  file: Node,
  h: Qcow2Header,
): Promise<{ tableBytes: number; l1s: { offset: number; bytes: number }[] }> {
  const l1s: { offset: number; bytes: number }[] = [];
  let pos = h.snapshotsOffset;
  const fileLen = file.getLength();
  for (let i = 0; i < h.nbSnapshots; i++) {
    const fixed = new Uint8Array(40);
    if (pos + 40 > fileLen) {
      throw new BlockError(
        "EINVAL",
        `Snapshot table entry ${i} is beyond the end of the image file`,
      );
    }
    await file.read(pos, fixed);
    const view = viewOf(fixed);
    const l1Offset = getU64(view, 0);
    const l1Size = view.getUint32(8);
    const idLen = view.getUint16(12);
    const nameLen = view.getUint16(14);
    const extra = view.getUint32(36);
    if (l1Offset % 2 ** h.clusterBits !== 0) {
      throw new BlockError("EINVAL", `Snapshot L1 table offset invalid`);
    }
    l1s.push({ offset: l1Offset, bytes: l1Size * 8 });
    pos += 40 + extra + idLen + nameLen;
    pos = Math.ceil(pos / 8) * 8;
  }
  return { tableBytes: pos - h.snapshotsOffset, l1s };
}

/** The number of L2 tables the cache holds: the option, or the whole image up to 1 TiB. */
function l2CacheTables(options: OptionValues, h: Qcow2Header): number {
  const cs = 2 ** h.clusterBits;
  const given = options["l2-cache-size"] as number | undefined;
  if (given !== undefined) return Math.max(2, Math.ceil(given / cs));
  const perTable = cs * (cs / 8);
  return Math.max(2, Math.min(h.l1Size, Math.ceil(DEFAULT_L2_COVERAGE / perTable)));
}

/** Resolves a backing file name relative to the image's own file name, as QEMU does. */
export function resolveBackingName(backing: string, imageFilename: string): string {
  if (backing.startsWith("/") || /^[a-zA-Z0-9.+-]+:/.test(backing)) return backing;
  const slash = imageFilename.lastIndexOf("/");
  if (slash < 0 || /^[a-zA-Z0-9.+-]+:\/\/[^/]*$/.test(imageFilename)) return backing;
  return imageFilename.slice(0, slash + 1) + backing;
}

/** Opens the backing file the header names, with the format its extension names. */
async function openHeaderBacking(ctx: OpenContext, file: Node, h: Qcow2Header): Promise<void> {
  const name = h.backingFile!;
  const fmt = backingFormat(h);
  if (fmt === undefined) {
    throw new BlockError(
      "EINVAL",
      `Backing file '${name}' has no backing format in the image header, and blockgraph ` +
        "never probes a backing file; recreate the image with a backing format " +
        "(-F), or give the 'backing' option",
    );
  }
  const graph = ctx.node.graph;
  const filename = resolveBackingName(name, file.filename);
  const holder = `opening backing of '${ctx.node.name}'`;
  let node: Node;
  try {
    node = await graph.open({ driver: fmt, "read-only": true, file: { filename } }, holder);
  } catch (e) {
    const err = BlockError.from(e);
    throw new BlockError(err.code, `Could not open backing file: ${err.message}`, { cause: e });
  }
  try {
    ctx.attachChild(node, "backing", ChildRole.COW);
  } finally {
    await node.unref(holder);
  }
}

/** Opens a qcow2 node over its `file` child. */
export async function openQcow2(ctx: OpenContext, options: OptionValues): Promise<Qcow2Instance> {
  const fileChild = (await ctx.openChild("file", ChildRole.IMAGE, true))!;
  const file = fileChild.node!;
  const h = parseHeader(await readFirstCluster(file));
  const writable = !ctx.readOnly;
  const cs = 2 ** h.clusterBits;
  if (h.cryptMethod !== 0) {
    throw new BlockError(
      "ENOTSUP",
      `qcow2: encrypted images (crypt method ${h.cryptMethod}) are not supported`,
    );
  }
  if (h.incompatible & BigInt(Incompat.DATA_FILE)) {
    throw new BlockError("ENOTSUP", "qcow2: images with an external data file are not supported");
  }
  if (h.incompatible & BigInt(Incompat.EXTL2)) {
    throw new BlockError("ENOTSUP", "qcow2: images with extended L2 entries are not supported");
  }
  if (writable && (h.incompatible & BigInt(Incompat.CORRUPT))) {
    throw new BlockError("EACCES", "qcow2: Image is corrupt; cannot be opened read/write");
  }
  if (writable && (h.incompatible & BigInt(Incompat.DIRTY))) {
    throw new BlockError(
      "EACCES",
      "qcow2: Image is dirty (refcounts may be wrong) and repairing it on open is not " +
        "supported; open it read-only, or repair it with 'qemu-img check -r all'",
    );
  }
  const fileLen = file.getLength();
  checkInside("Active L1 table", h.l1TableOffset, h.l1Size * 8, cs, fileLen);
  checkInside(
    "Reference count table",
    h.refcountTableOffset,
    h.refcountTableClusters * cs,
    cs,
    fileLen,
  );
  const l1 = new Uint8Array(h.l1Size * 8);
  await file.read(h.l1TableOffset, l1);
  const refTable = await readRefTable(file, h);
  const snaps = h.nbSnapshots > 0 ? await readSnapshotLayout(file, h) : null;
  const node = ctx.node;
  const image = new Qcow2Image(file, h, l1, refTable, writable, l2CacheTables(options, h), {
    nodeName: node.name,
    emit: (name, data) => node.graph.events.emit(name, data),
  });
  if (snaps) {
    image.map.setRange("snapshot table", h.snapshotsOffset, snaps.tableBytes);
    for (const l1s of snaps.l1s) image.map.addRange("inactive L1 table", l1s.offset, l1s.bytes);
  }
  if (writable && h.version >= 3 && h.autoclear !== 0n) {
    // Autoclear features this driver does not maintain (bitmaps) must be cleared first.
    h.autoclear = 0n;
    const buf = new Uint8Array(8);
    setU64(viewOf(buf), 0, 0);
    await image.write("qcow2_header", 88, buf);
    await image.flush();
  }
  const backing = await ctx.openChild("backing", ChildRole.COW, false);
  if (!backing && h.backingFile !== undefined) await openHeaderBacking(ctx, file, h);
  return new Qcow2Instance(node, image);
}
