/**
 * `blockgraph img measure`: qemu-img's `measure [--output=ofmt] [-O fmt] [-o options]
 * [--size N | [-f fmt] [-U] [--image-opts] filename]` — the bytes a new image needs
 * (`required`) and would take fully allocated, with QEMU's formulas for qcow2 and raw, and for
 * a qcow2 source and target what its persistent bitmaps would take (`bitmaps`).
 *
 * @module
 */

import { BlockStatusFlags, type Graph, type Node } from "@blockgraph/core";
import type { CliIo } from "../common/cli_io.ts";
import { getopt, glibcMessage } from "../common/getopt.ts";
import { secretLookupFailure } from "../common/object_option.ts";
import { qdictJson } from "../common/qdict_json.ts";
import { parseQemuOpts } from "../common/qemu_opts.ts";
import { chainStatus } from "./chain_status.ts";
import { creatableFormat, imgCvtnum, imgError, imgOpen, imgOutputFormat } from "./img_common.ts";
import { imgCommonOption, imgHelp } from "./img_help.ts";
import { accumulateOptions } from "./img_options.ts";
import { supportsPersistentBitmaps } from "./image_facts.ts";
import { encryptionOptionError, isEncryptionKey, luksHeaderBytes } from "./create_encryption.ts";

const up = (n: number, a: number) => Math.ceil(n / a) * a;

/** QEMU's `qcow2_refcount_metadata_size`: refcount table and block bytes for `clusters`. */
export function refcountMetadataSize(clusters: number, cs: number, order: number): number {
  const perTable = cs / 8;
  const perBlock = cs * 8 / 2 ** order;
  let table = 0;
  let blocks = 0;
  let n = 0;
  let last;
  do {
    last = n;
    blocks = Math.ceil((clusters + table + blocks) / perBlock);
    table = Math.ceil(blocks / perTable);
    n = clusters + blocks + table;
  } while (n !== last);
  return (blocks + table) * cs;
}

/**
 * QEMU's `qcow2_calc_prealloc_size`: the file size of a fully allocated qcow2 image (L2
 * entries of 16 bytes with `extendedL2`).
 */
export function qcow2FullSize(size: number, cs: number, order: number, extendedL2 = false): number {
  const aligned = up(size, cs);
  let meta = cs;
  const l2e = extendedL2 ? 16 : 8;
  const nl2e = up(aligned / cs, cs / l2e);
  meta += nl2e * l2e;
  const nl1e = up(nl2e * l2e / cs, cs / 8);
  meta += nl1e * 8;
  meta += refcountMetadataSize((meta + aligned) / cs, cs, order);
  return meta + aligned;
}

/**
 * QEMU's `qcow2_get_persistent_dirty_bitmap_size`: the bytes `node`'s persistent bitmaps
 * would take in a qcow2 image of `cs`-byte clusters, each fully allocated (data clusters and
 * its table), plus the bitmap directory.
 */
export function persistentBitmapsSize(node: Node, cs: number): number {
  let bytes = 0;
  let dir = 0;
  for (const bm of node.dirtyBitmaps) {
    if (!bm.persistent || bm.name === null) continue;
    const clusters = Math.ceil(Math.ceil(Math.ceil(bm.size / bm.granularity) / 8) / cs);
    bytes += clusters * cs + up(clusters * 8, cs);
    // A directory entry: 24 bytes and the name, 8-aligned.
    dir += up(24 + new TextEncoder().encode(bm.name).length, 8);
  }
  return bytes + up(dir, cs);
}

/** Bytes of whole `cs` clusters that hold data in `node`'s chain. */
async function dataBytes(node: Node, cs: number): Promise<number> {
  const len = node.getLength();
  let required = 0;
  for (let off = 0; off < len;) {
    const st = await chainStatus(node, off, len - off);
    let pnum = st.pnum;
    const both = BlockStatusFlags.DATA | BlockStatusFlags.ALLOCATED;
    if (!(st.status & BlockStatusFlags.ZERO) && (st.status & both) === both) {
      pnum = up(off + pnum, cs) - off;
      required += (off % cs) + pnum;
    }
    off += pnum;
  }
  return required;
}

/** Runs `img measure` with `args` (after `measure`); returns the exit status. */
export async function imgMeasure(
  graph: Graph,
  args: readonly string[],
  io: CliIo,
): Promise<number> {
  const r = getopt(args, ":hf:O:o:l:U", [
    { name: "help", arg: "none", key: "h" },
    { name: "image-opts", arg: "none", key: "image-opts" },
    { name: "object", arg: "required", key: "object" },
    { name: "output", arg: "required", key: "output" },
    { name: "size", arg: "required", key: "size" },
    { name: "force-share", arg: "none", key: "U" },
  ]);
  let format: string | undefined;
  let outFmt = "raw";
  let output = "human";
  let size: number | null = null;
  let forceShare = false;
  let imageOpts = false;
  let optText: string | undefined;
  for (const o of r.options) {
    const stop = imgCommonOption(graph, io, o);
    if (stop !== null) return stop;
    const v = o.value!;
    if (o.key === "f") format = v;
    else if (o.key === "O") outFmt = v;
    else if (o.key === "o") {
      const joined = accumulateOptions(io, optText, v);
      if (joined === null) return 1;
      optText = joined;
    } else if (o.key === "output") {
      if (imgOutputFormat(io, v) === null) return 1;
      output = v;
    } else if (o.key === "U") forceShare = true;
    else if (o.key === "image-opts") imageOpts = true;
    else if (o.key === "size") {
      size = imgCvtnum(io, "image size", v);
      if (size === null) return 1;
    }
  }
  if (r.error) {
    // measure lets getopt print its own complaint, then shows the help.
    io.err(glibcMessage("measure", r.error) + "\n");
    return imgHelp(graph, io);
  }
  const fmtOut = output as "human" | "json";
  if (r.operands.length > 1) {
    imgError(io, "At most one filename argument is allowed.");
    return 1;
  }
  const filename = r.operands[0];
  if (filename === undefined && (imageOpts || format !== undefined)) {
    imgError(io, "--image-opts, -f, and -l require a filename argument.");
    return 1;
  }
  if (filename === undefined && size === null) {
    imgError(io, "Either --size N or one filename must be specified.");
    return 1;
  }
  if (filename !== undefined && size !== null) {
    imgError(io, "--size N cannot be used together with a filename.");
    return 1;
  }
  const drv = creatableFormat(graph, io, outFmt);
  if (!drv) return 1;
  if (outFmt !== "raw" && outFmt !== "qcow2") {
    imgError(io, `Block driver '${outFmt}' does not support size measurement`);
    return 1;
  }
  const opts = optText === undefined ? {} : parseQemuOpts(optText).values;
  // The format's create options and the file protocol's, as QEMU parses them.
  const known = { ...drv.createOptions, ...graph.registry.find("file")?.createOptions };
  const qcow2 = outFmt === "qcow2";
  for (const [k, v] of Object.entries(opts)) {
    // qcow2's encryption options are create options QEMU knows (`create_encryption.ts`).
    const encryption = qcow2 && isEncryptionKey(k);
    const problem = k === "filename" || !(encryption || k in known)
      ? `Invalid parameter '${k}'`
      : encryption
      ? encryptionOptionError(k, v)
      : null;
    if (problem !== null) {
      imgError(io, problem);
      imgError(io, `Invalid options for file format '${outFmt}'`);
      return 1;
    }
  }
  const cs = opts.cluster_size ? imgCvtnum(io, "cluster size", opts.cluster_size) : 65536;
  if (cs === null) return 1;
  const order = Math.log2(Number(opts.refcount_bits ?? 16));
  const extendedL2 = opts.extended_l2 === "on" || opts.extended_l2 === "true";
  if (outFmt === "qcow2" && extendedL2 && cs < 16384) {
    imgError(
      io,
      "Extended L2 entries are only supported with cluster sizes of at least 16384 bytes",
    );
    return 1;
  }
  // A LUKS header goes in front of the data (QEMU counts no other encryption option here).
  let luks = 0;
  if (qcow2 && opts["encrypt.format"] === "luks") {
    const header = luksHeaderBytes(opts, (id) => secretLookupFailure(graph.objects, id));
    if (typeof header !== "number") {
      imgError(io, header.error);
      return 1;
    }
    luks = up(header, cs);
  }
  // QEMU's qcow2_measure: full and falloc preallocation count every cluster as data.
  const prealloc = opts.preallocation === "full" || opts.preallocation === "falloc";
  let info: Record<string, number>;
  if (filename !== undefined) {
    const image = await imgOpen(graph, io, {
      filename,
      format,
      imageOpts,
      readOnly: true,
      forceShare,
    });
    if (!image) return 1;
    try {
      const len = image.node.getLength();
      if (outFmt === "raw") info = { required: len, "fully-allocated": len };
      else {
        const virt = up(len, cs);
        const full = luks + qcow2FullSize(virt, cs, order, extendedL2);
        const required = opts.backing_file || prealloc ? virt : await dataBytes(image.node, cs);
        info = { required: full - virt + required, "fully-allocated": full };
        // Bitmaps only when both the source and the target format could store them.
        const v2 = opts.compat === "0.10" || opts.compat === "v2";
        if (!v2 && supportsPersistentBitmaps(image.node)) {
          info.bitmaps = persistentBitmapsSize(image.node, cs);
        }
      }
    } finally {
      await image.backend.unref();
    }
  } else if (outFmt === "raw") {
    const n = up(size!, 512);
    info = { required: n, "fully-allocated": n };
  } else {
    const virt = up(size!, cs);
    const full = luks + qcow2FullSize(virt, cs, order, extendedL2);
    info = { required: full - virt + (prealloc ? virt : 0), "fully-allocated": full };
  }
  if (fmtOut === "json") io.out(qdictJson(info));
  else {
    io.out(`required size: ${info.required}\nfully allocated size: ${info["fully-allocated"]}\n`);
    if (info.bitmaps !== undefined) io.out(`bitmaps size: ${info.bitmaps}\n`);
  }
  return 0;
}
