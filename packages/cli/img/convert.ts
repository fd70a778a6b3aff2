/**
 * `blockgraph img convert`: qemu-img's `convert [-f fmt] [-O fmt] [-o options] [-c] [-p] [-q]
 * [-n] [-B backing [-F fmt]] [-S sparse] [-m N] [-W] [-t cache] [-T src_cache] [-U]
 * [--target-is-zero] [--image-opts] [--target-image-opts] [--bitmaps [--skip-broken-bitmaps]]
 * filename [filename2 ...] output`, with its checks and messages; the copy itself is in
 * `convert_copy.ts`, the bitmaps' in `convert_bitmaps.ts`.
 *
 * @module
 */

import { BlockError, type Graph, type Node, parseKeyValue, strerror } from "@blockgraph/core";
import type { CliIo } from "../common/cli_io.ts";
import { getopt } from "../common/getopt.ts";
import { type OpenedImage, parseCacheMode } from "../common/open_image.ts";
import { parseQemuOpts } from "../common/qemu_opts.ts";
import { runCopy } from "./convert_copy.ts";
import { createImage } from "./create.ts";
import { accumulateOptions, createOptionsHelp, hasHelpOption } from "./img_options.ts";
import { imgCvtnum, imgError, imgOpen, imgOptionError } from "./img_common.ts";
import { imgCommonOption } from "./img_help.ts";
import { imageFacts, qcow2Of, supportsPersistentBitmaps } from "./image_facts.ts";
import { checkSourceBitmaps, copyBitmaps } from "./convert_bitmaps.ts";
import { Progress } from "./progress.ts";

const MAX_SPARSE = 16 << 20;
/** Bytes per request: larger than qemu-img's 2 MiB, fewer round trips for the same work. */
const CHUNK = 4 << 20;

interface ConvertArgs {
  fmt?: string;
  outFmt: string;
  options: Record<string, string>;
  compress: boolean;
  progress: boolean;
  quiet: boolean;
  skipCreate: boolean;
  backing?: string;
  backingFmt?: string;
  sparse: number;
  workers: number;
  outOfOrder: boolean;
  rate: number;
  cache: string;
  srcCache: string;
  forceShare: boolean;
  targetIsZero: boolean;
  imageOpts: boolean;
  targetImageOpts: boolean;
  snapshot?: SnapshotSpec;
  bitmaps: boolean;
  skipBrokenBitmaps: boolean;
}

/** Parses the command line; a number is the exit status of an error already printed. */
function parseArgs(
  graph: Graph,
  args: readonly string[],
  io: CliIo,
): { a: ConvertArgs; files: string[] } | number {
  const r = getopt(args, ":hf:O:B:CcF:o:l:S:pt:T:qnm:WUr:", [
    { name: "help", arg: "none", key: "h" },
    { name: "object", arg: "required", key: "object" },
    { name: "image-opts", arg: "none", key: "image-opts" },
    { name: "target-image-opts", arg: "none", key: "target-image-opts" },
    { name: "force-share", arg: "none", key: "U" },
    { name: "target-is-zero", arg: "none", key: "target-is-zero" },
    { name: "salvage", arg: "none", key: "salvage" },
    { name: "bitmaps", arg: "none", key: "bitmaps" },
    { name: "skip-broken-bitmaps", arg: "none", key: "skip-broken-bitmaps" },
  ]);
  const a: ConvertArgs = {
    outFmt: "raw",
    options: {},
    compress: false,
    progress: false,
    quiet: false,
    skipCreate: false,
    sparse: 4096,
    workers: 8,
    outOfOrder: false,
    rate: 0,
    cache: "unsafe",
    srcCache: "writeback",
    forceShare: false,
    targetIsZero: false,
    imageOpts: false,
    targetImageOpts: false,
    bitmaps: false,
    skipBrokenBitmaps: false,
  };
  let outFmtGiven = false;
  let optText: string | undefined;
  for (const o of r.options) {
    const stop = imgCommonOption(graph, io, o);
    if (stop !== null) return stop;
    const v = o.value!;
    switch (o.key) {
      case "f":
        a.fmt = v;
        break;
      case "O":
        a.outFmt = v;
        outFmtGiven = true;
        break;
      case "B":
        a.backing = v;
        break;
      case "F":
        a.backingFmt = v;
        break;
      case "c":
        a.compress = true;
        break;
      case "o": {
        const joined = accumulateOptions(io, optText, v);
        if (joined === null) return 1;
        optText = joined;
        break;
      }
      case "l":
        // QEMU: `snapshot.id=...,snapshot.name=...` options, or a legacy ID-or-name.
        if (v.startsWith("snapshot.")) {
          const parsed = parseQemuOpts(v);
          for (const w of parsed.warnings) imgError(io, w);
          const bad = Object.keys(parsed.values).find(
            (k) => k !== "snapshot.id" && k !== "snapshot.name",
          );
          if (bad !== undefined) {
            imgError(io, `Invalid parameter '${bad}'`);
            imgError(io, `Failed in parsing snapshot param '${v}'`);
            return 1;
          }
          a.snapshot = {
            id: parsed.values["snapshot.id"],
            name: parsed.values["snapshot.name"],
          };
        } else a.snapshot = { idOrName: v };
        break;
      case "S": {
        const n = imgCvtnum(io, "buffer size for sparse output", v);
        if (n === null) return 1;
        if (n % 512 !== 0 || n > MAX_SPARSE) {
          imgError(
            io,
            "Invalid buffer size for sparse output specified. Valid sizes are multiples of " +
              `512 up to ${MAX_SPARSE}. Select 0 to disable sparse detection (fully allocates ` +
              "output).",
          );
          return 1;
        }
        a.sparse = n;
        break;
      }
      case "p":
        a.progress = true;
        break;
      case "t":
        a.cache = v;
        break;
      case "T":
        a.srcCache = v;
        break;
      case "q":
        a.quiet = true;
        break;
      case "n":
        a.skipCreate = true;
        break;
      case "m": {
        const n = /^\d+$/.test(v) ? Number(v) : 0;
        if (n < 1 || n > 16) {
          imgError(
            io,
            "Invalid number of coroutines. Allowed number of coroutines is between 1 and 16",
          );
          return 1;
        }
        a.workers = n;
        break;
      }
      case "W":
        a.outOfOrder = true;
        break;
      case "r": {
        const n = imgCvtnum(io, "rate limit", v);
        if (n === null) return 1;
        a.rate = n;
        break;
      }
      case "U":
        a.forceShare = true;
        break;
      case "target-is-zero":
        a.targetIsZero = true;
        break;
      case "image-opts":
        a.imageOpts = true;
        break;
      case "target-image-opts":
        a.targetImageOpts = true;
        break;
      case "bitmaps":
        a.bitmaps = true;
        break;
      case "skip-broken-bitmaps":
        a.skipBrokenBitmaps = true;
        break;
    }
  }
  if (r.error) return imgOptionError(io, r.error);
  if (a.targetImageOpts && !a.skipCreate) {
    imgError(io, "--target-image-opts requires use of -n flag");
    return 1;
  }
  if (a.skipBrokenBitmaps && !a.bitmaps) {
    imgError(io, "Use of --skip-broken-bitmaps requires --bitmaps");
    return 1;
  }
  if (!outFmtGiven && a.targetImageOpts) a.outFmt = "";
  if (a.quiet) a.progress = false;
  if (optText !== undefined && hasHelpOption(optText)) {
    if (a.outFmt === "") {
      imgError(io, "Option help requires a format be specified");
      return 1;
    }
    const out = r.operands.length >= 2 ? r.operands[r.operands.length - 1] : undefined;
    return createOptionsHelp(graph, io, a.outFmt, out) === 0 ? 0 : 1;
  }
  if (optText !== undefined) a.options = parseQemuOpts(optText).values;
  if (r.operands.length < 2) {
    imgError(io, "Must specify image file name");
    return 1;
  }
  if (a.targetIsZero && !a.skipCreate) {
    imgError(io, "--target-is-zero requires use of -n flag");
    return 1;
  }
  if (a.skipCreate && Object.keys(a.options).length > 0) {
    imgError(io, "-o has no effect when skipping image creation");
    return 1;
  }
  if (!parseCacheMode(a.cache)) {
    imgError(io, `Invalid cache option: ${a.cache}`);
    return 1;
  }
  if (!parseCacheMode(a.srcCache)) {
    imgError(io, `Invalid source cache option: ${a.srcCache}`);
    return 1;
  }
  return { a, files: r.operands };
}

/** What `-l` names: QEMU's snapshot options, or a legacy snapshot ID-or-name. */
type SnapshotSpec = { id?: string | undefined; name?: string | undefined } | {
  idOrName: string;
};

/**
 * Loads the `-l` snapshot into the first source, as qemu-img convert (QEMU's
 * `bdrv_snapshot_load_tmp`, or `..._by_id_or_name`: the ID first, then the name); the
 * message to fail with, or null.
 */
async function loadSnapshot(
  sources: readonly OpenedImage[],
  spec: SnapshotSpec,
): Promise<string | null> {
  if ("idOrName" in spec && sources.length > 1) {
    return "No support for concatenating multiple snapshot";
  }
  const node = sources[0]!.node;
  const q = qcow2Of(node);
  const load = async (id: string | undefined, name: string | undefined) => {
    if (id === undefined && name === undefined) {
      throw new BlockError("EINVAL", "snapshot_id and name are both NULL");
    }
    if (!q) {
      throw new BlockError(
        "ENOTSUP",
        `Block format '${node.driver.name}' used by device '' does not support temporarily ` +
          "loading internal snapshots",
      );
    }
    await q.snapshotLoadTemporarily(id, name);
  };
  try {
    if ("idOrName" in spec) {
      try {
        await load(spec.idOrName, undefined);
      } catch (e) {
        if (!(e instanceof BlockError) || e.code !== "ENOENT") throw e;
        await load(undefined, spec.idOrName);
      }
    } else await load(spec.id, spec.name);
    return null;
  } catch (e) {
    return `Failed to load snapshot: ${BlockError.from(e).message}`;
  }
}

/** Runs `img convert` with `args` (after `convert`); returns the exit status. */
export async function imgConvert(
  graph: Graph,
  args: readonly string[],
  io: CliIo,
): Promise<number> {
  const parsed = parseArgs(graph, args, io);
  if (typeof parsed === "number") return parsed;
  const { a, files } = parsed;
  const outName = files[files.length - 1]!;
  const srcNames = files.slice(0, -1);
  const sources: OpenedImage[] = [];
  let target: OpenedImage | null = null;
  try {
    for (const name of srcNames) {
      const img = await imgOpen(graph, io, {
        filename: name,
        format: a.fmt,
        imageOpts: a.imageOpts,
        readOnly: true,
        forceShare: a.forceShare,
        noShare: true,
        cache: a.srcCache,
      });
      if (!img) return 1;
      sources.push(img);
    }
    if (a.snapshot !== undefined) {
      const failure = await loadSnapshot(sources, a.snapshot);
      if (failure !== null) {
        imgError(io, failure);
        return 1;
      }
    }
    // With --target-image-opts and no -O, the target's own options name its driver (qemu-img
    // only needs the format to create the target, and -n skips that).
    const fmtName = a.outFmt === "" && a.targetImageOpts && a.skipCreate
      ? targetDriverName(outName)
      : a.outFmt;
    const fmt = graph.registry.find(fmtName);
    if (!fmt || fmt.kind === "filter") {
      imgError(io, `Unknown file format '${fmtName}'`);
      return 1;
    }
    const total = sources.reduce((s, i) => s + i.node.getLength(), 0);
    if (!a.skipCreate && a.backing !== undefined && !fmt.supportsBacking) {
      imgError(io, `Backing file not supported for file format '${fmt.name}'`);
      return 1;
    }
    if (!a.skipCreate && fmt.supportsBacking) {
      // `-o backing_file=` makes a target with a backing file as -B does (-B wins).
      const { backing_file: file, backing_fmt: fmt } = a.options;
      if (a.backing === undefined && file !== undefined) a.backing = file;
      if (a.backingFmt === undefined && fmt !== undefined) a.backingFmt = fmt;
    }
    if (sources.length > 1 && a.backing !== undefined) {
      imgError(
        io,
        "Having a backing file for the target makes no sense when concatenating multiple " +
          "input images",
      );
      return 1;
    }
    if (!a.skipCreate && a.backing !== undefined && a.backingFmt === undefined) {
      imgError(io, "Use of backing file requires explicit backing format");
      return 1;
    }
    if (a.compress && fmt.name !== "qcow2") {
      imgError(io, "Compression not supported for this file format");
      return 1;
    }
    if (a.bitmaps) {
      if (sources.length > 1) {
        imgError(io, "Copying bitmaps only possible with single source");
        return 1;
      }
      if (!checkSourceBitmaps(io, sources[0]!.node, a.skipBrokenBitmaps)) return 1;
    }
    if (!a.skipCreate) {
      const ret = await createImage(graph, io, {
        fmt: fmt.name,
        filename: outName,
        options: a.options,
        size: total,
        backingFile: a.backing,
        backingFmt: a.backingFmt,
        unsafe: true,
        verbose: false,
        convert: true,
      });
      if (ret !== 0) return ret;
    }
    target = await imgOpen(graph, io, {
      filename: outName,
      format: a.targetImageOpts ? undefined : a.outFmt,
      imageOpts: a.targetImageOpts,
      readOnly: false,
      cache: a.cache,
      noBacking: a.backing === undefined,
      bulkWrite: true,
      // The image just created opens with the key its create options named (qemu-img's
      // `img_add_key_secrets`: every `-o` option whose name ends in `key-secret`).
      options: a.skipCreate ? {} : Object.fromEntries(
        Object.entries(a.options).filter(([k]) => k.endsWith("key-secret")),
      ),
    });
    if (!target) return 1;
    if (a.bitmaps && !supportsPersistentBitmaps(target.node)) {
      imgError(io, `Format driver '${target.node.driver.name}' does not support bitmaps`);
      return 1;
    }
    const hasBacking = a.backing !== undefined || target.node.cowChild?.node != null;
    if (a.targetIsZero && hasBacking) {
      imgError(io, "Cannot use --target-is-zero when the destination image has a backing file");
      return 1;
    }
    if (a.skipCreate && target.node.getLength() < total) {
      imgError(io, "output file is smaller than input file");
      return 1;
    }
    const compressCluster = a.compress ? clusterSizeOf(target) : 0;
    const progress = new Progress(io, a.progress, 1);
    progress.print(0, 100);
    try {
      await runCopy({
        sources: sources.map((s) => s.node),
        target: target.node,
        sparse: a.sparse,
        compressCluster,
        // A created image reads as zeros unless its driver says otherwise (raw on NBD).
        zeroInit: a.targetIsZero ||
          (!a.skipCreate && !hasBacking && (target.node.instance?.hasZeroInit?.() ?? true)),
        targetHasBacking: a.backing !== undefined,
        workers: a.workers,
        outOfOrder: a.outOfOrder,
        chunk: compressCluster ? Math.max(compressCluster, CHUNK) : CHUNK,
        rate: a.rate,
        // Unless a dirty bitmap records the writes: then it ends as qemu-img's does.
        skipTargetZeros: !recordsWrites(target.node),
        // qemu-img's progress steps: over the data only (a walk first, only with -p).
        progressData: a.progress,
      }, progress);
      await target.node.flush();
    } catch (e) {
      progress.end();
      const b = BlockError.from(e);
      // A copy failure says where; a failed flush at the end is a write QEMU reports so too.
      imgError(
        io,
        b.op === "convert" ? b.message : `error while writing at byte 0: ${strerror(b.code)}`,
      );
      return 1;
    }
    if (a.bitmaps) {
      const ok = copyBitmaps(graph, io, sources[0]!.node, target.node, a.skipBrokenBitmaps);
      if (!ok) {
        progress.end();
        return 1;
      }
    }
    // qemu-img ends a successful conversion with 100% (again, when the copy reached it).
    progress.print(100, 0);
    progress.end();
    return 0;
  } finally {
    for (const s of sources) await s.backend.unref();
    if (target) await target.backend.unref();
  }
}

/** The cluster size compressed writes need. */
function clusterSizeOf(image: OpenedImage): number {
  return imageFacts(image.node).clusterSize ?? 65536;
}

/** The `driver=` of an image-opts target (`driver=raw,file.filename=x`), or "". */
function targetDriverName(opts: string): string {
  try {
    const d = parseKeyValue(opts)["driver"];
    return typeof d === "string" ? d : "";
  } catch {
    return "";
  }
}

/** Whether an enabled dirty bitmap on `node` or below it records what is written to it. */
function recordsWrites(node: Node): boolean {
  return node.dirtyBitmaps.some((b) => b.enabled) ||
    node.children.some((c) => c.node !== null && recordsWrites(c.node));
}
