/**
 * `blockgraph img resize`: qemu-img's `resize [-f fmt] [--preallocation=mode] [-q] [--shrink]
 * [--image-opts] filename [+|-]size`, with its checks and messages.
 *
 * @module
 */

import { BlockError, type Graph, type PreallocMode } from "@blockgraph/core";
import type { CliIo } from "../common/cli_io.ts";
import { strtosz } from "../common/cvtnum.ts";
import { getopt } from "../common/getopt.ts";
import { imgError, imgErrorExit, imgOpen, imgOptionError } from "./img_common.ts";
import { imgCommonOption } from "./img_help.ts";

const PREALLOC: readonly string[] = ["off", "metadata", "falloc", "full"];

/** qemu-img's message for a size option it cannot read. */
export const SIZE_PARAM_ERROR = "Parameter 'size' expects a non-negative number below 2^64\n" +
  "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n" +
  "and exabytes, respectively.";

/** Runs `img resize` with `args` (after `resize`); returns the exit status. */
export async function imgResize(
  graph: Graph,
  args: readonly string[],
  io: CliIo,
): Promise<number> {
  // The size is taken off first, so that a negative size is not read as an option.
  if (args.length < 2) return imgErrorExit(io, "Not enough arguments");
  let sizeText = args[args.length - 1]!;
  const r = getopt(args.slice(0, -1), ":f:hq", [
    { name: "help", arg: "none", key: "h" },
    { name: "object", arg: "required", key: "object" },
    { name: "image-opts", arg: "none", key: "image-opts" },
    { name: "preallocation", arg: "required", key: "preallocation" },
    { name: "shrink", arg: "none", key: "shrink" },
  ]);
  let format: string | undefined;
  let quiet = false;
  let imageOpts = false;
  let shrink = false;
  let prealloc: PreallocMode = "off";
  for (const o of r.options) {
    const stop = imgCommonOption(graph, io, o);
    if (stop !== null) return stop;
    if (o.key === "f") format = o.value!;
    else if (o.key === "q") quiet = true;
    else if (o.key === "image-opts") imageOpts = true;
    else if (o.key === "shrink") shrink = true;
    else if (o.key === "preallocation") {
      if (!PREALLOC.includes(o.value!)) {
        imgError(io, `Invalid preallocation mode '${o.value}'`);
        return 1;
      }
      prealloc = o.value as PreallocMode;
    }
  }
  if (r.error) return imgOptionError(io, r.error);
  if (r.operands.length !== 1) return imgErrorExit(io, "Expecting image file name and size");
  let relative = 0;
  if (sizeText.startsWith("+")) relative = 1;
  else if (sizeText.startsWith("-")) relative = -1;
  if (relative) sizeText = sizeText.slice(1);
  const parsed = strtosz(sizeText);
  if (parsed.value === undefined) {
    imgError(io, SIZE_PARAM_ERROR);
    return 1;
  }
  // qemu-img does this arithmetic in int64: 8E and more wrap to negative sizes.
  const n = BigInt.asIntN(64, parsed.value);
  const image = await imgOpen(graph, io, {
    filename: r.operands[0]!,
    format,
    imageOpts,
    readOnly: false,
  });
  if (!image) return 1;
  try {
    const current = image.node.getLength();
    const total64 = relative ? BigInt.asIntN(64, BigInt(current) + BigInt(relative) * n) : n;
    if (total64 <= 0n) {
      imgError(io, "New image size must be positive");
      return 1;
    }
    const total = Number(total64);
    if (total <= current && prealloc !== "off") {
      imgError(io, "Preallocation can only be used for growing images");
      return 1;
    }
    if (total < current && !shrink) {
      imgError(io, "Use the --shrink option to perform a shrink operation.");
      io.err(
        "qemu-img: warning: Shrinking an image will delete all data beyond the shrunken " +
          "image's end. Before performing such an operation, make sure there is no " +
          "important data there.\n",
      );
      return 1;
    }
    try {
      // exact, as qemu-img's: the image must have the size asked for afterwards (an NBD
      // export, which cannot change, refuses rather than reports success).
      await image.node.truncate(total, true, prealloc);
    } catch (e) {
      imgError(io, BlockError.from(e).message);
      return 1;
    }
    if (!quiet) io.out("Image resized.\n");
    return 0;
  } finally {
    await image.backend.unref();
  }
}
