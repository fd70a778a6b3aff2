/**
 * `img bitmap`: qemu-img 7.2's persistent dirty bitmap editor. Actions (`--add`, `--remove`,
 * `--clear`, `--enable`, `--disable`, `--merge SOURCE`) apply in the order given to one
 * bitmap of one image, each through core's {@link DirtyBitmaps} (the same operations as the
 * daemon's `block-dirty-bitmap-*` commands); the image's driver stores the result at close.
 * The first failing action stops the run, keeping the ones before it, as qemu-img does.
 *
 * @module
 */

import { type BitmapSource, DirtyBitmaps, type Graph } from "@blockgraph/core";
import type { CliIo } from "../common/cli_io.ts";
import { getopt } from "../common/getopt.ts";
import { imgCvtnum, imgError, imgOpen, imgOptionError, imgReportError } from "./img_common.ts";
import { imgCommonOption } from "./img_help.ts";

/** One action of the command line, in order. */
type BitmapAction =
  | { op: "add" | "remove" | "clear" | "enable" | "disable" }
  | { op: "merge"; source: string };

/** Runs `img bitmap` with `args` (after `bitmap`); returns the exit status. */
export async function imgBitmap(
  graph: Graph,
  args: readonly string[],
  io: CliIo,
): Promise<number> {
  const r = getopt(args, ":b:f:F:g:h", [
    { name: "help", arg: "none", key: "h" },
    { name: "object", arg: "required", key: "object" },
    { name: "image-opts", arg: "none", key: "image-opts" },
    { name: "add", arg: "none", key: "add" },
    { name: "remove", arg: "none", key: "remove" },
    { name: "clear", arg: "none", key: "clear" },
    { name: "enable", arg: "none", key: "enable" },
    { name: "disable", arg: "none", key: "disable" },
    { name: "merge", arg: "required", key: "merge" },
    { name: "granularity", arg: "required", key: "g" },
    { name: "source-file", arg: "required", key: "b" },
    { name: "source-format", arg: "required", key: "F" },
  ]);
  const actions: BitmapAction[] = [];
  let format: string | undefined;
  let srcFile: string | undefined;
  let srcFormat: string | undefined;
  let granularity = 0;
  let imageOpts = false;
  for (const o of r.options) {
    const stop = imgCommonOption(graph, io, o);
    if (stop !== null) return stop;
    const v = o.value!;
    switch (o.key) {
      case "b":
        srcFile = v;
        break;
      case "f":
        format = v;
        break;
      case "F":
        srcFormat = v;
        break;
      case "g": {
        const g = imgCvtnum(io, "granularity", v);
        if (g === null) return 1;
        granularity = g;
        break;
      }
      case "merge":
        actions.push({ op: "merge", source: v });
        break;
      case "add":
      case "remove":
      case "clear":
      case "enable":
      case "disable":
        actions.push({ op: o.key });
        break;
      case "image-opts":
        imageOpts = true;
        break;
    }
  }
  if (r.error) return imgOptionError(io, r.error);
  if (actions.length === 0) {
    imgError(io, "Need at least one of --add, --remove, --clear, --enable, --disable, or --merge");
    return 1;
  }
  if (granularity && !actions.some((a) => a.op === "add")) {
    imgError(io, "granularity only supported with --add");
    return 1;
  }
  if (srcFormat !== undefined && srcFile === undefined) {
    imgError(io, "-F only supported with -b");
    return 1;
  }
  if (srcFile !== undefined && !actions.some((a) => a.op === "merge")) {
    imgError(io, "Merge bitmap source file only supported with --merge");
    return 1;
  }
  if (r.operands.length !== 2) {
    imgError(io, "Expecting filename and bitmap name");
    return 1;
  }
  const [filename, name] = r.operands as [string, string];
  // The bitmaps live in this image whatever its backing file holds: no backing chain.
  const image = await imgOpen(graph, io, {
    filename,
    format,
    imageOpts,
    readOnly: false,
    noBacking: true,
  });
  if (!image) return 1;
  try {
    let src = image;
    if (srcFile !== undefined) {
      const opened = await imgOpen(graph, io, {
        filename: srcFile,
        format: srcFormat,
        readOnly: true,
        noBacking: true,
      });
      if (!opened) return 1;
      src = opened;
    }
    try {
      const bitmaps = new DirtyBitmaps(graph);
      const node = image.node.name;
      for (const a of actions) {
        try {
          await runAction(bitmaps, node, name, src.node.name, a, granularity);
        } catch (e) {
          imgReportError(io, `Operation ${a.op} on bitmap ${name} failed: `, e);
          return 1;
        }
      }
      return 0;
    } finally {
      if (src !== image) await src.backend.unref();
    }
  } finally {
    await image.backend.unref();
  }
}

/** Applies one action to bitmap `name` of node `node`; merges come from `srcNode`. */
function runAction(
  bitmaps: DirtyBitmaps,
  node: string,
  name: string,
  srcNode: string,
  a: BitmapAction,
  granularity: number,
): void | Promise<void> {
  const ref = { node, name };
  switch (a.op) {
    case "add":
      // qemu-img hands the int64 over as QMP's uint32 (so 4G wraps to 0, refused); 0
      // means none given: the driver's default.
      bitmaps.add({
        ...ref,
        persistent: true,
        ...(granularity ? { granularity: Number(BigInt(granularity) & 0xffffffffn) } : {}),
      });
      return;
    case "remove":
      return bitmaps.remove(ref);
    case "clear":
      return bitmaps.clear(ref);
    case "enable":
      return bitmaps.enable(ref);
    case "disable":
      return bitmaps.disable(ref);
    case "merge": {
      const source: BitmapSource = { node: srcNode, name: a.source };
      return bitmaps.merge({ node, target: name, bitmaps: [source] });
    }
  }
}
