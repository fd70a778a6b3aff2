/**
 * `blockgraph img commit`: qemu-img's `commit [-f fmt] [-t cache] [-b base] [-d] [-p] [-q]
 * [-r rate] [--image-opts] filename` — everything allocated above the base is written into
 * it. Then, unless `-d` (or `-b`), the top is emptied as QEMU's `bdrv_make_empty` does: a
 * qcow2 top loses all its clusters and reads through to its backing file again; a top of a
 * format without make_empty keeps its (now redundant) clusters, as qemu-img leaves it.
 *
 * @module
 */

import { BlockError, type Graph, type Node, pathHasProtocol, strerror } from "@blockgraph/core";
import type { Qcow2Instance } from "@blockgraph/drivers";
import type { CliIo } from "../common/cli_io.ts";
import { getopt } from "../common/getopt.ts";
import { runCopy } from "./convert_copy.ts";
import { imageFacts } from "./image_facts.ts";
import { imgCvtnum, imgError, imgErrorExit, imgOpen, imgOptionError } from "./img_common.ts";
import { imgCommonOption } from "./img_help.ts";
import { displayFilename } from "./info.ts";
import { skipFilters } from "./map.ts";
import { Progress } from "./progress.ts";

/** Bytes per request, as `img convert`'s. */
const CHUNK = 4 << 20;
/** Requests in flight, as `img convert`'s default `-m`. */
const WORKERS = 8;

/**
 * Copies what `top` reads where the chain above `base` holds something into `target` (the
 * base, opened for writing), as QEMU's active commit (a mirror) does: several requests in
 * flight, completing in any order; ranges that read as zeros become write-zeroes that may
 * unmap (a zero cluster in a qcow2 base with a backing file), the rest is read and written,
 * at most `rate` bytes a second (0: unlimited). A base shorter than `top` grows to its length
 * first, as the mirror grows it.
 */
export async function copyAbove(
  top: Node,
  base: Node,
  target: Node,
  progress: Progress,
  rate = 0,
): Promise<void> {
  if (target.getLength() < top.getLength()) await target.truncate(top.getLength(), false);
  await runCopy({
    sources: [top],
    target,
    above: base,
    sparse: 0,
    compressCluster: 0,
    zeroInit: false,
    targetHasBacking: false,
    workers: WORKERS,
    outOfOrder: true,
    chunk: CHUNK,
    rate,
  }, progress);
}

/**
 * The layer of `top`'s chain whose filename is `name`, or, for a name with a protocol
 * (`json:{...}`), that the layer above names so in its header; `null` when none is.
 */
export function findInChain(top: Node, name: string): Node | null {
  const protocol = pathHasProtocol(name);
  for (let above = top, n = top.layerBelow; n; above = n, n = n.layerBelow) {
    if (displayFilename(n) === name || n.name === name) return n;
    if (protocol && imageFacts(above).backingFile === name) return n;
  }
  return null;
}

/** Runs `img commit` with `args` (after `commit`); returns the exit status. */
export async function imgCommit(
  graph: Graph,
  args: readonly string[],
  io: CliIo,
): Promise<number> {
  const r = getopt(args, ":f:ht:b:dpqr:", [
    { name: "help", arg: "none", key: "h" },
    { name: "object", arg: "required", key: "object" },
    { name: "image-opts", arg: "none", key: "image-opts" },
  ]);
  let format: string | undefined;
  let cache = "writeback";
  let baseName: string | undefined;
  let drop = false;
  let progress = false;
  let quiet = false;
  let rate = 0;
  let imageOpts = false;
  for (const o of r.options) {
    const stop = imgCommonOption(graph, io, o);
    if (stop !== null) return stop;
    const v = o.value!;
    if (o.key === "f") format = v;
    else if (o.key === "t") cache = v;
    else if (o.key === "b") {
      baseName = v;
      drop = true;
    } else if (o.key === "d") drop = true;
    else if (o.key === "p") progress = true;
    else if (o.key === "q") quiet = true;
    else if (o.key === "image-opts") imageOpts = true;
    else if (o.key === "r") {
      const n = imgCvtnum(io, "rate limit", v);
      if (n === null) return 1;
      rate = n;
    }
  }
  if (r.error) return imgOptionError(io, r.error);
  if (quiet) progress = false;
  if (r.operands.length !== 1) return imgErrorExit(io, "Expecting one image file name");
  const filename = r.operands[0]!;
  const image = await imgOpen(graph, io, {
    filename,
    format,
    imageOpts,
    readOnly: true,
    forceShare: true,
    cache,
  });
  if (!image) return 1;
  const prog = new Progress(io, progress, 1);
  let open = true;
  try {
    const top = image.node;
    let base: Node | null;
    if (baseName !== undefined) {
      base = findInChain(top, baseName);
      if (!base) {
        imgError(io, `Did not find '${baseName}' in the backing chain of '${filename}'`);
        return 1;
      }
    } else {
      // QEMU's bdrv_backing_chain_next: the COW child past filters (a raw top has none).
      const cow = skipFilters(top).cowChild?.node;
      base = cow ? skipFilters(cow) : null;
      if (!base) {
        imgError(io, "Image does not have a backing file");
        return 1;
      }
    }
    // The chain is opened read-only; the base is written through an image of its own, with
    // unmap on (qemu-img commit opens BDRV_O_UNMAP): zeros over allocated clusters free them.
    const writer = await imgOpen(graph, io, {
      filename: displayFilename(base),
      format: base.driver.name,
      readOnly: false,
      unmap: true,
      cache,
      bulkWrite: true,
    });
    if (!writer) return 1;
    try {
      prog.print(0, 100);
      await copyAbove(top, base, writer.node, prog, rate);
      await writer.node.flush();
    } catch (e) {
      // qemu-img runs the copy as a block job and reports its failure so.
      imgError(io, `Block job failed: ${strerror(BlockError.from(e).code)}`);
      return 1;
    } finally {
      await writer.backend.unref();
    }
    open = false;
    await image.backend.unref();
    if (!drop && !(await emptyTop(graph, io, { filename, format, imageOpts, cache }))) return 1;
    prog.end();
    if (!quiet) io.out("Image committed.\n");
    return 0;
  } finally {
    if (open) await image.backend.unref();
  }
}

/**
 * Empties the committed top (QEMU's `bdrv_make_empty`), opened read/write on its own: a
 * qcow2 top's clusters all become unallocated; other formats have no make_empty and are left
 * as they are (qemu-img ignores ENOTSUP there). Returns false after reporting a failure.
 */
async function emptyTop(
  graph: Graph,
  io: CliIo,
  o: { filename: string; format: string | undefined; imageOpts: boolean; cache: string },
): Promise<boolean> {
  const top = await imgOpen(graph, io, { ...o, readOnly: false, unmap: true });
  if (!top) return false;
  try {
    if (top.node.driver.name === "qcow2") await (top.node.instance as Qcow2Instance).makeEmpty();
    await top.node.flush();
    return true;
  } catch (e) {
    imgError(io, BlockError.from(e).message);
    return false;
  } finally {
    await top.backend.unref();
  }
}
