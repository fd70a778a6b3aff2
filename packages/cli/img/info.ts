/**
 * `blockgraph img info`: qemu-img's `info [-f fmt] [--output=human|json] [-U] [--image-opts]
 * filename`, with QEMU 7.2's human text and JSON keys in its order.
 *
 * @module
 */

import { fullBackingFilename, type Graph, type Node, refreshFilename } from "@blockgraph/core";
import type { CliIo } from "../common/cli_io.ts";
import { sizeToStr } from "../common/format.ts";
import { getopt } from "../common/getopt.ts";
import type { Qcow2Snapshot } from "@blockgraph/drivers";
import { qdictJson } from "../common/qdict_json.ts";
import { driverInfo, dumpFormatSpecific } from "../common/driver_info.ts";
import { imageFacts } from "./image_facts.ts";
import { imgError, imgErrorExit, imgOpen, imgOptionError, imgOutputFormat } from "./img_common.ts";
import { imgCommonOption } from "./img_help.ts";

/**
 * The bytes `node` takes on its storage: the driver's answer, or else the sum over its
 * children (QEMU's `bdrv_get_allocated_file_size`); `null` when unknown.
 */
export async function allocatedSize(node: Node): Promise<number | null> {
  const inst = node.instance;
  if (inst?.allocatedSize) {
    try {
      return await inst.allocatedSize();
    } catch {
      return null;
    }
  }
  if (node.children.length === 0) return null;
  let sum = 0;
  for (const c of node.children) {
    if (!c.node) continue;
    const n = await allocatedSize(c.node);
    if (n === null) return null;
    sum += n;
  }
  return sum;
}

/**
 * The filename a node shows, refreshed as QEMU's `bdrv_refresh_filename` makes it: a plain
 * one, or `json:{...}` of the options that decide what it reads. `noIo` as `img info` opens
 * images: a backing file left out or given otherwise does not count.
 */
export function displayFilename(node: Node, noIo = false): string {
  refreshFilename(node, { noIo });
  return node.filename;
}

/** The backing file name `node`'s image stores, usable from here; `undefined` when it has none. */
function fullBacking(node: Node, backing: string): string | undefined {
  try {
    return fullBackingFilename(node, backing);
  } catch {
    return undefined;
  }
}

/** The fields of QEMU's `ImageInfo` for one image, in insertion order. */
export async function imageInfo(node: Node): Promise<Record<string, unknown>> {
  const facts = imageFacts(node);
  const filename = displayFilename(node, true);
  const info: Record<string, unknown> = {
    "virtual-size": node.getLength(),
    filename,
    format: node.driver.name,
  };
  const actual = await allocatedSize(node);
  if (actual !== null) info["actual-size"] = actual;
  if (facts.clusterSize !== undefined) info["cluster-size"] = facts.clusterSize;
  if (facts.backingFile !== undefined) {
    info["backing-filename"] = facts.backingFile;
    const full = fullBacking(node, facts.backingFile);
    if (full !== undefined) info["full-backing-filename"] = full;
    if (facts.backingFormat !== undefined) info["backing-filename-format"] = facts.backingFormat;
  }
  if (facts.snapshots.length > 0) info.snapshots = facts.snapshots.map(snapshotJson);
  if (driverInfo(node) !== null) info["dirty-flag"] = facts.dirty;
  const specific = node.instance?.formatInfo?.();
  if (specific && Object.keys(specific).length > 0) {
    info["format-specific"] = { type: node.driver.name, data: specific };
  }
  // QEMU's `bdrv_is_encrypted`, shown only when true.
  if (specific?.encrypt !== undefined) info.encrypted = true;
  return info;
}

/** A snapshot as QEMU's `SnapshotInfo`. */
export function snapshotJson(s: Qcow2Snapshot): Record<string, unknown> {
  const out: Record<string, unknown> = {
    id: s.id,
    name: s.name,
    "vm-state-size": s["vm-state-size"],
    "date-sec": s["date-sec"],
    "date-nsec": s["date-nsec"],
    "vm-clock-sec": Math.floor(s["vm-clock-nsec"] / 1e9),
    "vm-clock-nsec": s["vm-clock-nsec"] % 1e9,
  };
  if (s.icount !== undefined) out.icount = s.icount;
  return out;
}

const pad2 = (n: number) => String(n).padStart(2, "0");

/** QEMU's `bdrv_snapshot_dump`: the table header (`null`) or one snapshot's row. */
export function snapshotRow(s: Qcow2Snapshot | null): string {
  if (!s) {
    return "ID".padEnd(10) + "TAG".padEnd(17) + "VM SIZE".padStart(8) + "DATE".padStart(20) +
      "VM CLOCK".padStart(13) + "ICOUNT".padStart(11);
  }
  const d = new Date(s["date-sec"] * 1000);
  const date = `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())} ` +
    `${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`;
  const ns = s["vm-clock-nsec"];
  const secs = Math.floor(ns / 1e9);
  const clock = `${pad2(Math.floor(secs / 3600))}:${pad2(Math.floor(secs / 60) % 60)}:` +
    `${pad2(secs % 60)}.${String(Math.floor(ns / 1e6) % 1000).padStart(3, "0")}`;
  return `${s.id.padEnd(9)} ${s.name.padEnd(16)} ${sizeToStr(s["vm-state-size"]).padStart(8)}` +
    `${date.padStart(20)}${clock.padStart(13)}${String(s.icount ?? "").padStart(11)}`;
}

/** QEMU's `bdrv_image_info_dump`: the human text of one image. */
export function humanInfo(info: Record<string, unknown>, snapshots: Qcow2Snapshot[]): string {
  const size = info["virtual-size"] as number;
  const actual = info["actual-size"] as number | undefined;
  let out = `image: ${info.filename}\nfile format: ${info.format}\n` +
    `virtual size: ${sizeToStr(size)} (${size} bytes)\n` +
    `disk size: ${actual === undefined ? "unavailable" : sizeToStr(actual)}\n`;
  if (info.encrypted === true) out += "encrypted: yes\n";
  if (info["cluster-size"] !== undefined) out += `cluster_size: ${info["cluster-size"]}\n`;
  if (info["dirty-flag"] === true) out += "cleanly shut down: no\n";
  const backing = info["backing-filename"] as string | undefined;
  if (backing !== undefined) {
    const full = info["full-backing-filename"] as string | undefined;
    const actual = full === undefined
      ? " (cannot determine actual path)"
      : full !== backing
      ? ` (actual path: ${full})`
      : "";
    out += `backing file: ${backing}${actual}\n`;
  }
  if (info["backing-filename-format"] !== undefined) {
    out += `backing file format: ${info["backing-filename-format"]}\n`;
  }
  if (snapshots.length > 0) {
    out += "Snapshot list:\n" + snapshotRow(null) + "\n";
    for (const s of snapshots) out += snapshotRow(s) + "\n";
  }
  const spec = info["format-specific"] as { data: Record<string, unknown> } | undefined;
  if (spec) out += "Format specific information:\n" + dumpFormatSpecific(spec.data, 4);
  return out;
}

/** Runs `img info` with `args` (after `info`); returns the exit status. */
export async function imgInfo(graph: Graph, args: readonly string[], io: CliIo): Promise<number> {
  const r = getopt(args, ":f:hU", [
    { name: "help", arg: "none", key: "h" },
    { name: "format", arg: "required", key: "f" },
    { name: "output", arg: "required", key: "output" },
    { name: "backing-chain", arg: "none", key: "backing-chain" },
    { name: "object", arg: "required", key: "object" },
    { name: "image-opts", arg: "none", key: "image-opts" },
    { name: "force-share", arg: "none", key: "U" },
  ]);
  let format: string | undefined;
  let output = "human";
  let imageOpts = false;
  let forceShare = false;
  let chain = false;
  for (const o of r.options) {
    const stop = imgCommonOption(graph, io, o);
    if (stop !== null) return stop;
    if (o.key === "f") format = o.value!;
    else if (o.key === "output") output = o.value!;
    else if (o.key === "image-opts") imageOpts = true;
    else if (o.key === "U") forceShare = true;
    else if (o.key === "backing-chain") chain = true;
  }
  if (r.error) return imgOptionError(io, r.error);
  if (r.operands.length !== 1) return imgErrorExit(io, "Expecting one image file name");
  const fmtOut = imgOutputFormat(io, output);
  if (!fmtOut) return 1;
  const infos: { info: Record<string, unknown>; snapshots: Qcow2Snapshot[] }[] = [];
  const seen = new Set<string>();
  let filename: string | undefined = r.operands[0]!;
  while (filename !== undefined) {
    if (seen.has(filename)) {
      imgError(io, `Backing file '${filename}' creates an infinite loop.`);
      return 1;
    }
    seen.add(filename);
    const image = await imgOpen(graph, io, {
      filename,
      format,
      imageOpts: imageOpts && infos.length === 0,
      readOnly: true,
      forceShare,
      noBacking: true,
      noIo: true,
    });
    if (!image) return 1;
    try {
      const info = await imageInfo(image.node);
      infos.push({ info, snapshots: imageFacts(image.node).snapshots });
      filename = chain ? info["full-backing-filename"] as string | undefined : undefined;
      if (chain && filename === undefined && info["backing-filename"] !== undefined) {
        imgError(
          io,
          "Could not determine absolute backing filename, but backing filename " +
            `'${info["backing-filename"]}' present`,
        );
        return 1;
      }
      format = info["backing-filename-format"] as string | undefined;
    } finally {
      await image.backend.unref();
    }
  }
  if (fmtOut === "json") {
    io.out(qdictJson(chain ? infos.map((i) => i.info) : infos[0]!.info));
  } else {
    io.out(infos.map((i) => humanInfo(i.info, i.snapshots)).join("\n"));
  }
  return 0;
}
