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
import { getopt } from "../common/getopt.ts";
import { parseQemuOpts } from "../common/qemu_opts.ts";
import { imgCvtnum, imgError, imgErrorExit, imgOptionError } from "./img_common.ts";
import { accumulateOptions, createOptionsHelp, hasHelpOption } from "./img_options.ts";
import { imgCommonOption } from "./img_help.ts";
import { ENCRYPTION_KEYS } from "@blockgraph/drivers";
import { encryptionOptionError, encryptionValues, isEncryptionKey } from "./create_encryption.ts";

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

/** Options that QEMU lists in the "Formatting" line with their defaults, in its order. */
const FORMATTING_ORDER: Record<string, [string, string | undefined][]> = {
  qcow2: [
    ...ENCRYPTION_KEYS.map((k): [string, string | undefined] => [k, undefined]),
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
    ["nocow", undefined],
    ["extent_size_hint", undefined],
  ],
  raw: [
    ["size", undefined],
    ["nocow", undefined],
    ["preallocation", undefined],
    ["extent_size_hint", undefined],
  ],
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
  /** The target of `convert`: errors are worded as qemu-img convert words them. */
  readonly convert?: boolean;
  /** The target of `dd`: the driver's errors as `filename: error while creating output image`. */
  readonly dd?: boolean;
}

/** The "Formatting" line: the options in QEMU's order, then the protocol's. */
function formattingLine(req: CreateRequest, given: Record<string, string>): string {
  const order = FORMATTING_ORDER[req.fmt] ?? [["size", undefined]];
  let line = `Formatting '${req.filename}', fmt=${req.fmt}`;
  const known = new Set(order.map(([k]) => k));
  // Values are printed as QemuOpts reads them back: a comma doubled (json: backing names).
  const esc = (v: string) => v.replaceAll(",", ",,");
  for (const [key, def] of order) {
    const v = given[key] ?? def;
    if (v !== undefined) line += ` ${key}=${esc(v)}`;
  }
  for (const [key, v] of Object.entries(given)) if (!known.has(key)) line += ` ${key}=${esc(v)}`;
  return line + "\n";
}

/**
 * Creates an image as qemu-img's `bdrv_img_create` does (also the target of `convert` and
 * `dd`); prints errors as `qemu-img: filename: message` (convert: option errors bare, the
 * driver's as `filename: error while converting fmt: message`); returns the exit status.
 */
export async function createImage(graph: Graph, io: CliIo, req: CreateRequest): Promise<number> {
  const { filename } = req;
  const fail = (message: string): number => {
    imgError(io, req.convert ? message : `${filename}: ${message}`);
    return 1;
  };
  const failCreate = (message: string): number =>
    fail(
      req.convert
        ? `${filename}: error while converting ${req.fmt}: ${message}`
        : req.dd
        ? `error while creating output image: ${message}`
        : message,
    );
  const fmt = graph.registry.find(req.fmt);
  if (!fmt) return fail(`Unknown file format '${req.fmt}'`);
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
  const encryption: Record<string, string> = {};
  for (const [key, value] of Object.entries(req.options)) {
    if (fmt.name === "qcow2" && isEncryptionKey(key)) {
      const error = encryptionOptionError(key, value);
      if (error !== null) return fail(error);
      encryption[key] = given[key] = value;
      continue;
    }
    const spec = schema[key];
    if (!spec) return fail(`Invalid parameter '${key}'`);
    // QemuOpts checks sizes, numbers and booleans as it parses; the driver checks the rest.
    if (spec.type === "enum" || spec.type === "string") {
      values[key] = given[key] = value;
      continue;
    }
    try {
      values[key] = validateOptions({ [key]: spec }, { [key]: value }, fmt.name)[key]!;
    } catch (e) {
      if (spec.type === "size") return fail(sizeTypeError(key));
      if (spec.type === "int") return fail(`Parameter '${key}' expects a number`);
      return fail(BlockError.from(e).message);
    }
    given[key] = spec.type === "bool" ? value : String(values[key]);
  }
  if (req.size !== undefined) {
    if (values.size !== undefined) return fail("The image size must be specified only once");
    values.size = req.size;
    given.size = String(req.size);
  }
  if (req.backingFile !== undefined) {
    if (!fmt.supportsBacking) {
      return fail(`Backing file not supported for file format '${fmt.name}'`);
    }
    values.backing_file = given.backing_file = req.backingFile;
  }
  if (req.backingFmt !== undefined) {
    if (!fmt.supportsBacking) {
      return fail(`Backing file format not supported for file format '${fmt.name}'`);
    }
    values.backing_fmt = given.backing_fmt = req.backingFmt;
  }
  const backingFile = values.backing_file as string | undefined;
  const backingFmt = values.backing_fmt as string | undefined;
  if (backingFile === filename) {
    return fail("Error: Trying to create an image with the same filename as the backing file");
  }
  if (backingFile === "") return fail("Expected backing file name, got empty string");
  if (backingFile !== undefined && !req.unsafe) {
    const name = resolveBackingName(backingFile, filename);
    const image = await openImageQuietly(graph, name, backingFmt);
    if (typeof image === "string") {
      imgError(io, `${filename}: ${image}`);
      io.err("Could not open backing image.\n");
      return 1;
    }
    if (backingFmt === undefined) {
      imgError(io, `${filename}: Backing file specified without backing format`);
      io.err(`Detected format of ${image.format}.`);
      return 1;
    }
    if (values.size === undefined) {
      values.size = image.size;
      given.size = String(image.size);
    }
  } else if (backingFile !== undefined && backingFmt === undefined) {
    return fail("Backing file specified without backing format");
  }
  if (values.size === undefined) return fail("Image creation needs a size parameter");
  if (req.verbose) io.out(formattingLine(req, given));
  if (backingFmt !== undefined && backingFile === undefined) {
    return failCreate("Backing format cannot be used without backing file");
  }
  for (const [key, spec] of Object.entries(schema)) {
    const v = values[key];
    if (spec.type !== "enum" || typeof v !== "string" || spec.values?.includes(v)) continue;
    // qcow2 checks its enums as QAPI members (dashed names); file-posix words its own.
    return failCreate(
      fmt.name === "qcow2"
        ? `Parameter '${key.replaceAll("_", "-")}' does not accept value '${v}'`
        : `invalid parameter value: ${v}`,
    );
  }
  try {
    await fmt.create({ ...values, ...encryptionValues(encryption), filename }, graph.registry, {
      warn: (message) => imgError(io, `warning: ${message}`),
      objects: graph.objects,
    });
  } catch (e) {
    const be = BlockError.from(e);
    const status = failCreate(be.message);
    // QEMU's hints follow the message (`server reported: ...` of an NBD server).
    if (be.hint) io.err(be.hint);
    return status;
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

/** Opens `filename` as `fmt` (probed if absent) in a scratch graph: size and format, or why not. */
async function openImageQuietly(
  graph: Graph,
  filename: string,
  fmt: string | undefined,
): Promise<{ size: number; format: string } | string> {
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
    const found = { size: image.node.getLength(), format: image.node.driver.name };
    await image.backend.unref();
    return found;
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
  let optText: string | undefined;
  for (const o of r.options) {
    const stop = imgCommonOption(graph, io, o);
    if (stop !== null) return stop;
    if (o.key === "f") fmtName = o.value!;
    else if (o.key === "o") {
      const joined = accumulateOptions(io, optText, o.value!);
      if (joined === null) return 1;
      optText = joined;
    } else if (o.key === "q") quiet = true;
    else if (o.key === "b") backingFile = o.value!;
    else if (o.key === "F") backingFmt = o.value!;
    else if (o.key === "u") unsafe = true;
  }
  if (r.error) return imgOptionError(io, r.error);
  const filename = r.operands[0];
  if (optText !== undefined && hasHelpOption(optText)) {
    return createOptionsHelp(graph, io, fmtName, filename);
  }
  const given = optText === undefined ? {} : parseQemuOpts(optText).values;
  if (filename === undefined) return imgErrorExit(io, "Expecting image file name");
  let size: number | undefined;
  if (r.operands.length > 1) {
    const parsed = imgCvtnum(io, "image size", r.operands[1]!);
    if (parsed === null) return 1;
    size = parsed;
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
