/**
 * `blockgraph img create`: qemu-img's `create -f fmt [-o options] [-q] filename [size]`, with
 * its size syntax, its "Formatting ..." line and its messages.
 *
 * @module
 */

import {
  type BlockDriver,
  BlockError,
  Graph,
  type OptionSchema,
  type OptionValues,
  validateOptions,
} from "@blockgraph/core";
import { DEFAULT_CACHE, openImage } from "../common/open_image.ts";
import type { CliIo } from "../common/cli_io.ts";
import { strtosz } from "../common/cvtnum.ts";
import { getopt } from "../common/getopt.ts";
import { parseQemuOpts } from "../common/qemu_opts.ts";
import { imgError, imgErrorExit, imgOptionError } from "./img_common.ts";
import { imgCommonOption } from "./img_help.ts";
import { ImgObjects } from "./img_objects.ts";

const INT64_MAX = (1n << 63n) - 1n;

/** Options of every format that are handed to the protocol when the format has no use for them. */
const PREALLOC_MODES = ["off", "metadata", "falloc", "full"];

function sizeTypeError(key: string): string {
  return `Parameter '${key}' expects a non-negative number below 2^64\n` +
    "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n" +
    "and exabytes, respectively.";
}

/** The create options of `fmt` followed by those of the protocol, as QEMU appends them. */
function createSchema(fmt: BlockDriver, proto: BlockDriver | null): OptionSchema {
  const out: Record<string, OptionSchema[string]> = {};
  for (const [k, v] of Object.entries(fmt.createOptions ?? {})) out[k] = v;
  for (const [k, v] of Object.entries(proto?.createOptions ?? {})) if (!(k in out)) out[k] = v;
  delete out.filename;
  return out;
}

function printHelp(io: CliIo, fmt: BlockDriver, schema: OptionSchema): void {
  io.out(`Supported ${fmt.name} options:\n`);
  const typeText: Record<string, string> = {
    size: "<size>",
    bool: "<bool (on/off)>",
    int: "<num>",
    string: "<str>",
    enum: "<str>",
  };
  for (const key of Object.keys(schema).sort()) {
    const spec = schema[key]!;
    const left = `  ${key}=${typeText[spec.type]}`;
    io.out(`${left.padEnd(24)} - ${spec.description}\n`);
  }
  io.out(
    "\nThe protocol level may support further options.\n" +
      "Specify the target filename to include those options.\n",
  );
}

/** Options that QEMU lists in the "Formatting" line with their defaults, in its order. */
const FORMATTING_ORDER: Record<string, [string, string | undefined][]> = {
  qcow2: [
    ["cluster_size", "65536"],
    ["extended_l2", "off"],
    ["preallocation", undefined],
    ["compression_type", "zlib"],
    ["size", undefined],
    ["compat", undefined],
    ["backing_file", undefined],
    ["backing_fmt", undefined],
    ["data_file", undefined],
    ["data_file_raw", undefined],
    ["lazy_refcounts", "off"],
    ["refcount_bits", "16"],
  ],
  raw: [["size", undefined], ["preallocation", undefined]],
};

/** What to create: qemu-img's `bdrv_img_create` arguments. */
export interface CreateRequest {
  /** The format name. */
  readonly fmt: string;
  /** The image filename. */
  readonly filename: string;
  /** `-o` options as typed (`key -> text`). */
  readonly options: Readonly<Record<string, string>>;
  /** The size operand, when given. */
  readonly size?: number | undefined;
  /** `-b`. */
  readonly backingFile?: string | undefined;
  /** `-F`. */
  readonly backingFmt?: string | undefined;
  /** `-u`: do not open the backing file. */
  readonly unsafe?: boolean;
  /** Print QEMU's "Formatting ..." line. */
  readonly verbose: boolean;
}

/** The "Formatting" line: the options in QEMU's order, then the protocol's. */
function formattingLine(req: CreateRequest, given: Record<string, string>): string {
  const order = FORMATTING_ORDER[req.fmt] ?? [["size", undefined]];
  let line = `Formatting '${req.filename}', fmt=${req.fmt}`;
  const known = new Set(order.map(([k]) => k));
  for (const [key, def] of order) {
    const v = given[key] ?? def;
    if (v !== undefined) line += ` ${key}=${v}`;
  }
  for (const [key, v] of Object.entries(given)) if (!known.has(key)) line += ` ${key}=${v}`;
  return line + "\n";
}

/**
 * Creates an image as `qemu-img create` does (also the target of `convert`); prints errors
 * as `qemu-img: filename: message` and returns the exit status.
 */
export async function createImage(graph: Graph, io: CliIo, req: CreateRequest): Promise<number> {
  const { filename } = req;
  const fail = (message: string): number => {
    imgError(io, `${filename}: ${message}`);
    return 1;
  };
  const fmt = graph.registry.find(req.fmt);
  if (!fmt || fmt.kind === "filter") return fail(`Unknown file format '${req.fmt}'`);
  let proto: BlockDriver;
  try {
    proto = graph.registry.protocolFor(filename);
  } catch (e) {
    return fail(BlockError.from(e).message);
  }
  if (!fmt.create) return fail(`Format driver '${fmt.name}' does not support image creation`);
  const schema = createSchema(fmt, fmt.kind === "protocol" ? null : proto);
  const given: Record<string, string> = {};
  const values: OptionValues = {};
  for (const [key, value] of Object.entries(req.options)) {
    const spec = schema[key];
    if (!spec) return fail(`Invalid parameter '${key}'`);
    if (key === "size" && req.size !== undefined) {
      return fail("The image size must be specified only once");
    }
    try {
      values[key] = validateOptions({ [key]: spec }, { [key]: value }, fmt.name)[key]!;
    } catch (e) {
      if (spec.type === "size") return fail(sizeTypeError(key));
      return fail(BlockError.from(e).message);
    }
    given[key] = spec.type === "size" || spec.type === "int" ? String(values[key]) : value;
  }
  if (req.size !== undefined) {
    values.size = req.size;
    given.size = String(req.size);
  }
  if (req.backingFile !== undefined) {
    if (!fmt.supportsBacking) {
      return fail(`Backing file not supported for file format '${fmt.name}'`);
    }
    values.backing_file = given.backing_file = req.backingFile;
    if (req.backingFmt !== undefined) values.backing_fmt = given.backing_fmt = req.backingFmt;
  }
  const backingFile = values.backing_file as string | undefined;
  const backingFmt = values.backing_fmt as string | undefined;
  if (backingFile !== undefined && backingFmt === undefined) {
    return fail("Backing file specified without backing format");
  }
  if (backingFile !== undefined && !req.unsafe) {
    const name = resolveBackingName(backingFile, filename);
    const image = await openImageQuietly(graph, name, backingFmt!);
    if (typeof image === "string") {
      imgError(io, `${filename}: ${image}`);
      io.err("Could not open backing image.\n");
      return 1;
    }
    if (values.size === undefined) {
      values.size = image;
      given.size = String(image);
    }
  }
  if (values.size === undefined) return fail("Image creation needs a size parameter");
  const prealloc = values.preallocation;
  if (typeof prealloc === "string" && !PREALLOC_MODES.includes(prealloc)) {
    return fail(`invalid parameter value: ${prealloc}`);
  }
  if (req.verbose) io.out(formattingLine(req, given));
  try {
    await fmt.create({ ...values, filename }, graph.registry);
  } catch (e) {
    return fail(BlockError.from(e).message);
  }
  return 0;
}

/** QEMU's rule for a relative backing name: relative to the overlay's directory. */
export function resolveBackingName(backing: string, imageFilename: string): string {
  if (backing.startsWith("/") || /^[a-zA-Z0-9.+-]+:/.test(backing)) return backing;
  const slash = imageFilename.lastIndexOf("/");
  if (slash < 0 || /^[a-zA-Z0-9.+-]+:\/\/[^/]*$/.test(imageFilename)) return backing;
  return imageFilename.slice(0, slash + 1) + backing;
}

/** Opens `filename` as `fmt` in a scratch graph: its size, or the error text. */
async function openImageQuietly(
  graph: Graph,
  filename: string,
  fmt: string,
): Promise<number | string> {
  const g = new Graph({ registry: graph.registry });
  try {
    const image = await openImage(g, {
      filename,
      format: fmt,
      readOnly: true,
      cache: DEFAULT_CACHE,
      discard: "ignore",
      forceShare: true,
    }, () => {});
    const size = image.node.getLength();
    await image.backend.unref();
    return size;
  } catch (e) {
    return BlockError.from(e).message;
  } finally {
    await g.closeAll();
  }
}

/** Runs `img create` with `args` (after `create`); returns the exit status. */
export async function imgCreate(graph: Graph, args: readonly string[], io: CliIo): Promise<number> {
  const r = getopt(args, ":F:b:f:ho:qu", [
    { name: "help", arg: "none", key: "h" },
    { name: "object", arg: "required", key: "object" },
  ]);
  let fmtName = "raw";
  let quiet = false;
  let unsafe = false;
  let backingFile: string | undefined;
  let backingFmt: string | undefined;
  const optTexts: string[] = [];
  const objects = new ImgObjects();
  for (const o of r.options) {
    const stop = imgCommonOption(graph, io, objects, o);
    if (stop !== null) return stop;
    if (o.key === "f") fmtName = o.value!;
    else if (o.key === "o") optTexts.push(o.value!);
    else if (o.key === "q") quiet = true;
    else if (o.key === "b") backingFile = o.value!;
    else if (o.key === "F") backingFmt = o.value!;
    else if (o.key === "u") unsafe = true;
  }
  if (r.error) return imgOptionError(io, r.error);
  const filename = r.operands[0];
  const given: Record<string, string> = {};
  for (const t of optTexts) Object.assign(given, parseQemuOpts(t).values);
  if ("help" in given || "?" in given) return createHelp(graph, io, fmtName);
  if (filename === undefined) return imgErrorExit(io, "Expecting image file name");
  let size: number | undefined;
  if (r.operands.length > 1) {
    const text = r.operands[1]!;
    const parsed = strtosz(text);
    if (parsed.error === "EINVAL") {
      imgError(
        io,
        "Invalid image size specified. You may use k, M, G, T, P or E suffixes for",
      );
      imgError(io, "kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.");
      return 1;
    }
    if (parsed.error === "ERANGE" || parsed.value! > INT64_MAX) {
      imgError(io, `Invalid image size specified. Must be between 0 and ${INT64_MAX}.`);
      return 1;
    }
    size = Number(parsed.value!);
  }
  if (r.operands.length > 2) return imgErrorExit(io, `Unexpected argument: ${r.operands[2]}`);
  return await createImage(graph, io, {
    fmt: fmtName,
    filename,
    options: given,
    size,
    backingFile,
    backingFmt,
    unsafe,
    verbose: !quiet,
  });
}

/** `-o help`: the format's create options. */
export function createHelp(graph: Graph, io: CliIo, fmtName: string): number {
  const fmt = graph.registry.find(fmtName);
  if (!fmt) {
    imgError(io, `Unknown file format '${fmtName}'`);
    return 1;
  }
  printHelp(io, fmt, createSchema(fmt, null));
  return 0;
}
