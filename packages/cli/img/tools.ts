/**
 * The smaller qemu-img subcommands: `amend -o options [--force]` (the qcow2 instance's
 * amend) and `dd bs= count= skip= if= of=`. `bitmap` is in `bitmap.ts`.
 *
 * @module
 */

import { BlockError, type Graph, type OptionSchema, parseBool, parseSize } from "@blockgraph/core";
import { ENCRYPTION_KEYS, QCOW2_AMEND_OPTIONS } from "@blockgraph/drivers";
import type { CliIo } from "../common/cli_io.ts";
import { getopt } from "../common/getopt.ts";
import { parseQemuOpts } from "../common/qemu_opts.ts";
import { createImage } from "./create.ts";
import { accumulateOptions, amendOptionsHelp, hasHelpOption } from "./img_options.ts";
import { qcow2Of } from "./image_facts.ts";
import { imgCvtnum, imgError, imgErrorExit, imgOpen, imgOptionError } from "./img_common.ts";
import { imgCommonOption } from "./img_help.ts";
import { Progress } from "./progress.ts";

/** qcow2's encryption options only create takes (amend takes those of LUKS key slots). */
const ENCRYPT_CREATE_ONLY = new Set(
  ENCRYPTION_KEYS.filter((k) => !(QCOW2_AMEND_OPTIONS as readonly string[]).includes(k)),
);

/**
 * What QemuOpts finds wrong in amend options before the driver sees them: names amend does
 * not know (hinting at those only create takes) and values of the wrong type; or `null`.
 */
function amendOptionError(create: OptionSchema, opts: Record<string, string>): string | null {
  for (const [key, value] of Object.entries(opts)) {
    const spec = create[key];
    if (key.startsWith("encrypt.") && !ENCRYPT_CREATE_ONLY.has(key)) continue;
    if (!(QCOW2_AMEND_OPTIONS as readonly string[]).includes(key)) {
      return `Invalid parameter '${key}'` +
        (spec || ENCRYPT_CREATE_ONLY.has(key)
          ? "\nThis option is only supported for image creation"
          : "");
    }
    if (spec?.type === "bool" && parseBool(value) === undefined) {
      return `Parameter '${key}' expects 'on' or 'off'`;
    }
    if (spec?.type === "int" && !/^\d+$/.test(value)) return `Parameter '${key}' expects a number`;
    if (spec?.type === "size" && parseSize(value) === undefined) {
      return `Parameter '${key}' expects a non-negative number below 2^64\n` +
        "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n" +
        "and exabytes, respectively.";
    }
  }
  return null;
}

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
  let optText: string | undefined;
  let progress = false;
  let quiet = false;
  let force = false;
  for (const o of r.options) {
    const stop = imgCommonOption(graph, io, o);
    if (stop !== null) return stop;
    if (o.key === "o") {
      const joined = accumulateOptions(io, optText, o.value!);
      if (joined === null) return 1;
      optText = joined;
    } else if (o.key === "f") format = o.value!;
    else if (o.key === "t") cache = o.value!;
    else if (o.key === "image-opts") imageOpts = true;
    else if (o.key === "p") progress = true;
    else if (o.key === "q") quiet = true;
    else if (o.key === "force") force = true;
  }
  if (r.error) return imgOptionError(io, r.error);
  if (optText === undefined) return imgErrorExit(io, "Must specify options (-o)");
  // From here on, -p's line ends with a newline whatever happens (qemu-img's `out:`).
  const prog = new Progress(io, progress && !quiet, 1);
  try {
    return await amend(graph, io, prog, {
      format,
      cache,
      imageOpts,
      optText,
      operands: r.operands,
      force,
    });
  } finally {
    prog.end();
  }
}

/** `img amend` once its arguments are parsed, reporting progress to `prog`. */
async function amend(
  graph: Graph,
  io: CliIo,
  prog: Progress,
  a: {
    format: string | undefined;
    cache: string;
    imageOpts: boolean;
    optText: string;
    operands: readonly string[];
    /** `--force`: overwrite an active key slot, erase the last one. */
    force: boolean;
  },
): Promise<number> {
  const { format, cache, imageOpts, optText } = a;
  const help = hasHelpOption(optText);
  // With -f, help needs no image.
  if (help && format !== undefined) return amendOptionsHelp(graph, io, format);
  if (a.operands.length !== 1) {
    imgError(io, "Expecting one image file name");
    return 1;
  }
  const opts = parseQemuOpts(optText).values;
  const image = await imgOpen(graph, io, {
    filename: a.operands[0]!,
    format,
    imageOpts,
    readOnly: false,
    cache,
  });
  if (!image) return 1;
  try {
    if (help) return amendOptionsHelp(graph, io, image.node.driver.name);
    const q = qcow2Of(image.node);
    if (!q) {
      imgError(io, `Format driver '${image.node.driver.name}' does not support option amendment`);
      return 1;
    }
    const bad = amendOptionError(image.node.driver.createOptions ?? {}, opts);
    if (bad !== null) {
      imgError(io, bad);
      return 1;
    }
    // In case the driver reports nothing, as qemu-img.
    prog.print(0, 0);
    let failure: string | null = null;
    try {
      await q.amend(opts, (done, total) => prog.print(100 * done / total, 0), a.force);
    } catch (e) {
      failure = BlockError.from(e).message;
    }
    prog.print(100, 0);
    if (failure !== null) {
      imgError(io, failure);
      return 1;
    }
    return 0;
  } finally {
    await image.backend.unref();
  }
}

const INT_MAX = 2 ** 31 - 1;

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
  let imageOpts = false;
  for (const o of r.options) {
    const stop = imgCommonOption(graph, io, o);
    if (stop !== null) return stop;
    if (o.key === "f") format = o.value!;
    else if (o.key === "O") outFmt = o.value!;
    else if (o.key === "U") forceShare = true;
    else if (o.key === "image-opts") imageOpts = true;
  }
  if (r.error) return imgOptionError(io, r.error);
  const dd: Record<string, string> = {};
  // Operands are taken in order, each number checked as it comes (qemu-img's cvtnum).
  let bs = 512;
  let count = -1;
  let skip = 0;
  for (const op of r.operands) {
    const eq = op.indexOf("=");
    const key = eq < 0 ? op : op.slice(0, eq);
    if (eq < 0 || !["bs", "count", "if", "of", "skip"].includes(key)) {
      imgError(io, `unrecognized operand ${key}`);
      return 1;
    }
    const value = op.slice(eq + 1);
    dd[key] = value;
    if (key === "bs" || key === "count" || key === "skip") {
      const n = key === "bs" ? imgCvtnum(io, key, value, 1, INT_MAX) : imgCvtnum(io, key, value);
      if (n === null) return 1;
      if (key === "bs") bs = n;
      else if (key === "count") count = n;
      else skip = n;
    }
  }
  if (dd.if === undefined || dd.of === undefined) {
    imgError(io, "Must specify both input and output files");
    return 1;
  }
  // --image-opts applies to the input only: qemu-img 7.2 creates and opens `of=` by its name.
  const src = await imgOpen(graph, io, {
    filename: dd.if,
    format,
    imageOpts,
    readOnly: true,
    forceShare,
  });
  if (!src) return 1;
  try {
    const outDrv = graph.registry.find(outFmt);
    if (!outDrv) {
      imgError(io, "Unknown file format");
      return 1;
    }
    if (!outDrv.create) {
      imgError(io, `Format driver '${outFmt}' does not support image creation`);
      return 1;
    }
    const inSize = src.node.getLength();
    // count= counts the blocks copied after skip=, as dd(1) and qemu-img's documentation say
    // (qemu-img 7.2 counts them from the start of the input: see the README).
    const skipsPast = skip * bs > inSize;
    const start = Math.min(skip * bs, inSize);
    let size = inSize - start;
    if (count >= 0) size = Math.min(size, count * bs);
    const ret = await createImage(graph, io, {
      fmt: outFmt,
      filename: dd.of,
      options: {},
      size,
      verbose: false,
      dd: true,
    });
    if (ret !== 0) return ret;
    const dst = await imgOpen(graph, io, {
      filename: dd.of,
      format: outFmt,
      readOnly: false,
      bulkWrite: true,
    });
    if (!dst) return 1;
    // Past the end of the input: an empty output image, as dd(1) makes, with qemu-img's warning.
    if (skipsPast) imgError(io, `${dd.if}: cannot skip to specified offset`);
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
