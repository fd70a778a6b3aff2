/**
 * `blockgraph img info`: qemu-img's `info [-f fmt] [--output=human|json] [-U] [--image-opts]
 * filename`, with QEMU 7.2's human text and JSON keys in its order.
 *
 * @module
 */

import { BlockError, type Graph, type Node } from "@blockgraph/core";
import type { CliIo } from "../common/cli_io.ts";
import { sizeToStr } from "../common/format.ts";
import { getopt } from "../common/getopt.ts";
import { DEFAULT_CACHE, openImage } from "../common/open_image.ts";
import { parseQemuOpts } from "../common/qemu_opts.ts";
import { unflatten } from "@blockgraph/core";
import { imgError, imgErrorExit, imgOptionError } from "./img_common.ts";

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

/** The filename a node shows: its own, or that of the child whose data it presents. */
export function displayFilename(node: Node): string {
  for (let n: Node | null = node; n; n = n.primaryChild?.node ?? null) {
    if (n.filename) return n.filename;
  }
  return "";
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
  if (r.error) return imgOptionError(io, r.error);
  let format: string | undefined;
  let output = "human";
  let imageOpts = false;
  let forceShare = false;
  for (const o of r.options) {
    if (o.key === "f") format = o.value!;
    else if (o.key === "output") output = o.value!;
    else if (o.key === "image-opts") imageOpts = true;
    else if (o.key === "U") forceShare = true;
  }
  if (output !== "human" && output !== "json") {
    imgError(io, "--output must be used with human or json as argument.");
    return 1;
  }
  if (r.operands.length !== 1) return imgErrorExit(io, "Expecting one image file name");
  const arg = r.operands[0]!;
  if (imageOpts && format !== undefined) {
    imgError(io, "--image-opts and --format are mutually exclusive");
    return 1;
  }
  let image;
  try {
    image = await openImage(graph, {
      filename: imageOpts ? null : arg,
      format,
      options: imageOpts ? unflatten(parseQemuOpts(arg).values) : {},
      readOnly: true,
      cache: { ...DEFAULT_CACHE, writethrough: false },
      discard: "ignore",
      forceShare,
    }, () => {});
  } catch (e) {
    imgError(io, `Could not open '${arg}': ${BlockError.from(e).message}`);
    return 1;
  }
  try {
    const node = image.node;
    const virtualSize = node.getLength();
    const actual = await allocatedSize(node);
    const filename = displayFilename(node);
    const specific = node.instance?.formatInfo?.() ?? {};
    const dirty = specific["dirty-flag"] === true;
    if (output === "json") {
      const info: Record<string, unknown> = {
        "virtual-size": virtualSize,
        filename,
        format: node.driver.name,
      };
      if (actual !== null) info["actual-size"] = actual;
      info["dirty-flag"] = dirty;
      io.out(JSON.stringify(info, null, 4) + "\n");
    } else {
      io.out(
        `image: ${filename}\n` +
          `file format: ${node.driver.name}\n` +
          `virtual size: ${sizeToStr(virtualSize)} (${virtualSize} bytes)\n` +
          `disk size: ${actual === null ? "unavailable" : sizeToStr(actual)}\n` +
          (dirty ? "cleanly shut down: no\n" : ""),
      );
    }
    return 0;
  } finally {
    await image.backend.unref();
  }
}
