/**
 * `blockgraph img create`: qemu-img's `create -f fmt [-o options] [-q] filename [size]`, with
 * its size syntax, its "Formatting ..." line and its messages.
 *
 * @module
 */

import {
  type BlockDriver,
  BlockError,
  type Graph,
  type OptionSchema,
  type OptionValues,
} from "@blockgraph/core";
import type { CliIo } from "../common/cli_io.ts";
import { strtosz } from "../common/cvtnum.ts";
import { getopt } from "../common/getopt.ts";
import { parseQemuOpts } from "../common/qemu_opts.ts";
import { imgError, imgErrorExit, imgOptionError } from "./img_common.ts";

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

/** Runs `img create` with `args` (after `create`); returns the exit status. */
export async function imgCreate(graph: Graph, args: readonly string[], io: CliIo): Promise<number> {
  const r = getopt(args, ":F:b:f:ho:qu", [
    { name: "help", arg: "none", key: "h" },
    { name: "object", arg: "required", key: "object" },
  ]);
  if (r.error) return imgOptionError(io, r.error);
  let fmtName = "raw";
  let quiet = false;
  let backing: string | undefined;
  const optTexts: string[] = [];
  for (const o of r.options) {
    if (o.key === "f") fmtName = o.value!;
    else if (o.key === "o") optTexts.push(o.value!);
    else if (o.key === "q") quiet = true;
    else if (o.key === "b") backing = o.value!;
  }
  const filename = r.operands[0];
  const given: Record<string, string> = {};
  for (const t of optTexts) Object.assign(given, parseQemuOpts(t).values);
  if ("help" in given || "?" in given) {
    const fmt = graph.registry.find(fmtName);
    if (!fmt) {
      imgError(io, `Unknown file format '${fmtName}'`);
      return 1;
    }
    printHelp(io, fmt, createSchema(fmt, null));
    return 0;
  }
  if (filename === undefined) return imgErrorExit(io, "Expecting image file name");
  let size: bigint | undefined;
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
    size = parsed.value!;
  }
  if (r.operands.length > 2) return imgErrorExit(io, `Unexpected argument: ${r.operands[2]}`);
  const fail = (message: string): number => {
    imgError(io, `${filename}: ${message}`);
    return 1;
  };
  const fmt = graph.registry.find(fmtName);
  if (!fmt || fmt.kind === "filter") return fail(`Unknown file format '${fmtName}'`);
  let proto: BlockDriver;
  try {
    proto = graph.registry.protocolFor(filename);
  } catch (e) {
    return fail(BlockError.from(e).message);
  }
  if (!fmt.create) return fail(`Format driver '${fmt.name}' does not support image creation`);
  if (backing !== undefined && !fmt.supportsBacking) {
    return fail(`Backing file not supported for file format '${fmt.name}'`);
  }
  const schema = createSchema(fmt, fmt.kind === "protocol" ? null : proto);
  const values: OptionValues = {};
  for (const [key, value] of Object.entries(given)) {
    const spec = schema[key];
    if (!spec) return fail(`Invalid parameter '${key}'`);
    if (key === "size") {
      if (size !== undefined) return fail("The image size must be specified only once");
      const p = strtosz(value);
      if (p.value === undefined) return fail(sizeTypeError(key));
      values.size = Number(p.value);
      continue;
    }
    values[key] = value;
  }
  if (size !== undefined) values.size = Number(size);
  if (values.size === undefined) return fail("Image creation needs a size parameter");
  if (!quiet) {
    let line = `Formatting '${filename}', fmt=${fmt.name}`;
    for (const key of ["size", ...Object.keys(schema).filter((k) => k !== "size")]) {
      if (values[key] !== undefined) line += ` ${key}=${String(values[key])}`;
    }
    io.out(line + "\n");
  }
  const prealloc = values.preallocation;
  if (typeof prealloc === "string" && !PREALLOC_MODES.includes(prealloc)) {
    return fail(`invalid parameter value: ${prealloc}`);
  }
  try {
    await fmt.create({ ...values, filename }, graph.registry);
  } catch (e) {
    return fail(BlockError.from(e).message);
  }
  return 0;
}
