/**
 * The smaller qemu-img subcommands: `amend -o options [--force]` (the qcow2 instance's
 * amend) and `dd bs= count= skip= if= of=`. `bitmap` is in `bitmap.ts`.
 *
 * @module
 */

import { BlockError, type Graph } from "@blockgraph/core";
import type { CliIo } from "../common/cli_io.ts";
import { strtosz } from "../common/cvtnum.ts";
import { getopt } from "../common/getopt.ts";
import { parseQemuOpts } from "../common/qemu_opts.ts";
import { createImage } from "./create.ts";
import { qcow2Of } from "./image_facts.ts";
import { imgError, imgErrorExit, imgOpen, imgOptionError } from "./img_common.ts";
import { imgCommonOption } from "./img_help.ts";
import { ImgObjects } from "./img_objects.ts";

/** Runs `img amend` with `args` (after `amend`); returns the exit status. */
export async function imgAmend(graph: Graph, args: readonly string[], io: CliIo): Promise<number> {
  const r = getopt(args, ":ho:f:t:pq", [
    { name: "help", arg: "none", key: "h" },
    { name: "object", arg: "required", key: "object" },
    { name: "image-opts", arg: "none", key: "image-opts" },
    { name: "force", arg: "none", key: "force" },
  ]);
  let format: string | undefined;
  let cache = "writeback";
  let imageOpts = false;
  const opts: Record<string, string> = {};
  let given = false;
  const objects = new ImgObjects();
  for (const o of r.options) {
    const stop = imgCommonOption(graph, io, objects, o);
    if (stop !== null) return stop;
    if (o.key === "o") {
      Object.assign(opts, parseQemuOpts(o.value!).values);
      given = true;
    } else if (o.key === "f") format = o.value!;
    else if (o.key === "t") cache = o.value!;
    else if (o.key === "image-opts") imageOpts = true;
  }
  if (r.error) return imgOptionError(io, r.error);
  if (!given) return imgErrorExit(io, "Must specify options (-o)");
  if (r.operands.length !== 1) return imgErrorExit(io, "Expecting one image file name");
  const image = await imgOpen(graph, io, {
    filename: r.operands[0]!,
    format,
    imageOpts,
    readOnly: false,
    cache,
  });
  if (!image) return 1;
  try {
    const q = qcow2Of(image.node);
    if (!q) {
      imgError(io, `Format driver '${image.node.driver.name}' does not support option amendment`);
      return 1;
    }
    try {
      await q.amend(opts);
    } catch (e) {
      imgError(io, BlockError.from(e).message);
      return 1;
    }
    return 0;
  } finally {
    await image.backend.unref();
  }
}

/** Runs `img dd` with `args` (after `dd`); returns the exit status. */
export async function imgDd(graph: Graph, args: readonly string[], io: CliIo): Promise<number> {
  const r = getopt(args, ":hf:O:U", [
    { name: "help", arg: "none", key: "h" },
    { name: "image-opts", arg: "none", key: "image-opts" },
    { name: "force-share", arg: "none", key: "U" },
    { name: "object", arg: "required", key: "object" },
  ]);
  let format: string | undefined;
  let outFmt = "raw";
  let forceShare = false;
  const objects = new ImgObjects();
  for (const o of r.options) {
    const stop = imgCommonOption(graph, io, objects, o);
    if (stop !== null) return stop;
    if (o.key === "f") format = o.value!;
    else if (o.key === "O") outFmt = o.value!;
    else if (o.key === "U") forceShare = true;
  }
  if (r.error) return imgOptionError(io, r.error);
  const dd: Record<string, string> = {};
  for (const op of r.operands) {
    const eq = op.indexOf("=");
    const key = eq < 0 ? op : op.slice(0, eq);
    if (eq < 0 || !["bs", "count", "if", "of", "skip"].includes(key)) {
      imgError(io, `unrecognized operand ${key}`);
      return 1;
    }
    dd[key] = op.slice(eq + 1);
  }
  if (dd.if === undefined || dd.of === undefined) {
    imgError(io, "Must specify both input and output files");
    return 1;
  }
  const num = (key: string, def: number, min: number): number | null => {
    if (dd[key] === undefined) return def;
    const v = strtosz(dd[key]!).value;
    if (v === undefined || Number(v) < min) {
      imgError(io, `invalid number: '${dd[key]}'`);
      return null;
    }
    return Number(v);
  };
  const bs = num("bs", 512, 1);
  const count = num("count", -1, 0);
  const skip = num("skip", 0, 0);
  if (bs === null || count === null || skip === null) return 1;
  const src = await imgOpen(graph, io, { filename: dd.if, format, readOnly: true, forceShare });
  if (!src) return 1;
  try {
    const inSize = src.node.getLength();
    const start = Math.min(skip * bs, inSize);
    let size = inSize - start;
    if (count >= 0) size = Math.min(size, count * bs);
    const ret = await createImage(graph, io, {
      fmt: outFmt,
      filename: dd.of,
      options: {},
      size,
      verbose: false,
    });
    if (ret !== 0) return ret;
    const dst = await imgOpen(graph, io, { filename: dd.of, format: outFmt, readOnly: false });
    if (!dst) return 1;
    try {
      const buf = new Uint8Array(Math.min(bs, 4 << 20));
      for (let at = 0; at < size; at += buf.length) {
        const view = buf.subarray(0, Math.min(buf.length, size - at));
        await src.node.read(start + at, view);
        await dst.node.write(at, view);
      }
    } catch (e) {
      imgError(io, BlockError.from(e).message);
      return 1;
    } finally {
      await dst.backend.unref();
    }
    return 0;
  } finally {
    await src.backend.unref();
  }
}
