/**
 * `blockgraph img map`: qemu-img's `map [-f fmt] [--output=human|json] [--start-offset=O]
 * [--max-length=L] [-U] [--image-opts] filename` — the block status of every range, walked
 * down the backing chain, merged into runs as qemu-img merges them.
 *
 * @module
 */

import {
  BlockError,
  type BlockStatus,
  BlockStatusFlags,
  type Graph,
  type Node,
  strerror,
} from "@blockgraph/core";
import type { CliIo } from "../common/cli_io.ts";
import { getopt } from "../common/getopt.ts";
import {
  imgCvtnum,
  imgError,
  imgErrorExit,
  imgOpen,
  imgOptionError,
  imgOutputFormat,
} from "./img_common.ts";
import { imgCommonOption } from "./img_help.ts";

/** One run of `map`: where it is, which layer answers, and what it reads as. */
export interface MapEntry {
  /** Guest offset. */
  start: number;
  /** Bytes. */
  length: number;
  /** How many backing layers down the answer came from (0: the top). */
  depth: number;
  /** Allocated in the layer at `depth`. */
  present: boolean;
  /** Reads as zeros. */
  zero: boolean;
  /** Holds data. */
  data: boolean;
  /** Where the data sits in `filename`, when known. */
  offset?: number;
  /** The file holding the data, when `offset` is known. */
  filename?: string;
}

/** The first node below filters (QEMU's `bdrv_skip_filters`). */
export function skipFilters(node: Node): Node {
  let n = node;
  while (n.driver.kind === "filter" && n.filteredChild?.node) n = n.filteredChild.node;
  return n;
}

/**
 * qemu-img's `get_block_status`: the status at `offset`, from the first layer that answers
 * (`depth` layers below the top it started at). At once when the layers have their answers
 * at hand, else a promise (see {@link Node.blockStatusNow}).
 */
export function mapStatus(
  top: Node,
  offset: number,
  bytes: number,
  depth = 0,
): MapEntry | Promise<MapEntry> {
  const node = skipFilters(top);
  const now = node.blockStatusNow(offset, bytes, true);
  return now instanceof Promise
    ? now.then((st) => entryOf(node, offset, depth, st))
    : entryOf(node, offset, depth, now);
}

/** The entry for `node`'s answer `st`, or, where it holds nothing, that of its backing file. */
function entryOf(
  node: Node,
  offset: number,
  depth: number,
  st: BlockStatus,
): MapEntry | Promise<MapEntry> {
  let status = st.status;
  if (!(status & (BlockStatusFlags.DATA | BlockStatusFlags.ZERO))) {
    const cow = node.cowChild?.node;
    if (cow) return mapStatus(cow, offset, st.pnum, depth + 1);
    status = 0;
  }
  const e: MapEntry = {
    start: offset,
    length: st.pnum,
    depth,
    present: (status & BlockStatusFlags.ALLOCATED) !== 0,
    zero: (status & BlockStatusFlags.ZERO) !== 0,
    data: (status & BlockStatusFlags.DATA) !== 0,
  };
  if ((status & BlockStatusFlags.OFFSET_VALID) !== 0 && st.map !== undefined) {
    e.offset = st.map;
    if (st.file) e.filename = st.file.filename;
  }
  return e;
}

/** qemu-img's `entry_mergeable`: whether `next` continues `curr`. */
export function mergeable(curr: MapEntry, next: MapEntry): boolean {
  if (curr.length === 0) return false;
  if (
    curr.zero !== next.zero || curr.data !== next.data || curr.depth !== next.depth ||
    curr.present !== next.present || (curr.filename === undefined) !==
      (next.filename === undefined) ||
    (curr.offset === undefined) !== (next.offset === undefined)
  ) return false;
  if (curr.filename !== undefined && curr.filename !== next.filename) return false;
  if (curr.offset !== undefined && curr.offset + curr.length !== next.offset) return false;
  return true;
}

const hex16 = (n: number) => (n === 0 ? "0" : `0x${n.toString(16)}`).padEnd(16);

/**
 * Prints one entry as qemu-img's `dump_map_entry`; in human output, folds `next` toward
 * zero so that zero and unallocated runs coalesce. Returns false (after the message) for
 * data without an offset, which the human format cannot show.
 */
export function dumpMapEntry(
  io: CliIo,
  format: "human" | "json",
  e: MapEntry,
  next: MapEntry | null,
): boolean {
  if (format === "human") {
    if (e.data && e.offset === undefined) {
      imgError(io, "File contains external, encrypted or compressed clusters.");
      return false;
    }
    if (e.data && !e.zero) {
      io.out(`${hex16(e.start)}${hex16(e.length)}${hex16(e.offset ?? 0)}${e.filename ?? ""}\n`);
    }
    if (next && (!next.data || next.zero)) {
      next.data = false;
      next.zero = true;
    }
    return true;
  }
  let line = `{ "start": ${e.start}, "length": ${e.length}, "depth": ${e.depth},` +
    ` "present": ${e.present}, "zero": ${e.zero}, "data": ${e.data}`;
  if (e.offset !== undefined) line += `, "offset": ${e.offset}`;
  io.out(line + "}" + (next ? ",\n" : ""));
  return true;
}

const GIB = 1 << 30;

/** Runs `img map` with `args` (after `map`); returns the exit status. */
export async function imgMap(graph: Graph, args: readonly string[], io: CliIo): Promise<number> {
  const r = getopt(args, ":f:s:l:hU", [
    { name: "help", arg: "none", key: "h" },
    { name: "format", arg: "required", key: "f" },
    { name: "output", arg: "required", key: "output" },
    { name: "object", arg: "required", key: "object" },
    { name: "image-opts", arg: "none", key: "image-opts" },
    { name: "force-share", arg: "none", key: "U" },
    { name: "start-offset", arg: "required", key: "s" },
    { name: "max-length", arg: "required", key: "l" },
  ]);
  let format: string | undefined;
  let output = "human";
  let imageOpts = false;
  let forceShare = false;
  let start = 0;
  let maxLength = -1;
  for (const o of r.options) {
    const stop = imgCommonOption(graph, io, o);
    if (stop !== null) return stop;
    if (o.key === "f") format = o.value!;
    else if (o.key === "output") output = o.value!;
    else if (o.key === "image-opts") imageOpts = true;
    else if (o.key === "U") forceShare = true;
    else if (o.key === "s") {
      const v = imgCvtnum(io, "start offset", o.value!);
      if (v === null) return 1;
      start = v;
    } else if (o.key === "l") {
      const v = imgCvtnum(io, "max length", o.value!);
      if (v === null) return 1;
      maxLength = v;
    }
  }
  if (r.error) return imgOptionError(io, r.error);
  if (r.operands.length !== 1) return imgErrorExit(io, "Expecting one image file name");
  const fmtOut = imgOutputFormat(io, output);
  if (!fmtOut) return 1;
  const image = await imgOpen(graph, io, {
    filename: r.operands[0]!,
    format,
    imageOpts,
    readOnly: true,
    forceShare,
  });
  if (!image) return 1;
  try {
    const top = image.node;
    let length = top.getLength();
    if (maxLength !== -1) length = Math.min(start + maxLength, length);
    if (fmtOut === "human") {
      io.out(`${"Offset".padEnd(16)}${"Length".padEnd(16)}${"Mapped to".padEnd(16)}File\n`);
    } else io.out("[");
    let curr: MapEntry = { start, length: 0, depth: 0, present: false, zero: false, data: false };
    while (curr.start + curr.length < length) {
      const offset = curr.start + curr.length;
      let next: MapEntry;
      try {
        const now = mapStatus(top, offset, Math.min(GIB, length - offset));
        next = now instanceof Promise ? await now : now;
      } catch (e) {
        imgError(io, `Could not read file metadata: ${strerror(BlockError.from(e).code)}`);
        return 1;
      }
      if (mergeable(curr, next)) {
        curr.length += next.length;
        continue;
      }
      if (curr.length > 0 && !dumpMapEntry(io, fmtOut, curr, next)) return 1;
      curr = next;
    }
    if (!dumpMapEntry(io, fmtOut, curr, null)) return 1;
    if (fmtOut === "json") io.out("]\n");
    return 0;
  } finally {
    await image.backend.unref();
  }
}
