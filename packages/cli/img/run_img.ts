/**
 * `blockgraph img`: qemu-img's command line for the subcommands blockgraph has so far
 * (all of qemu-img 7.2's), with qemu-img's global options, messages and exit statuses.
 *
 * @module
 */

import { Graph } from "@blockgraph/core";
import { defaultRegistry } from "@blockgraph/drivers";
import type { CliIo } from "../common/cli_io.ts";
import { getopt } from "../common/getopt.ts";
import { imgBench } from "./bench.ts";
import { imgCreate } from "./create.ts";
import { imgErrorExit, imgOptionError } from "./img_common.ts";
import { imgCompare } from "./compare.ts";
import { imgConvert } from "./convert.ts";
import { imgCheck } from "./check.ts";
import { imgCommit } from "./commit.ts";
import { imgInfo } from "./info.ts";
import { imgAmend, imgDd } from "./tools.ts";
import { imgBitmap } from "./bitmap.ts";
import { imgMeasure } from "./measure.ts";
import { imgRebase } from "./rebase.ts";
import { imgResize } from "./resize.ts";
import { imgSnapshot } from "./snapshot.ts";
import { imgMap } from "./map.ts";

/** The version text (`-V`). */
export const IMG_VERSION = "blockgraph img version 0.1.0 (speaks qemu-img 7.2)\n";

/** Each subcommand's syntax line. */
const SYNTAX: readonly string[] = [
  "amend [--object objectdef] [--image-opts] [-p] [-q] [-f fmt] [-t cache] [--force] -o options filename",
  "bench [-c count] [-d depth] [-f fmt] [--flush-interval=flush_interval] [-i aio] [-n] [--no-drain] [-o offset] [--pattern=pattern] [-q] [-s buffer_size] [-S step_size] [-t cache] [-w] [-U] filename",
  "bitmap (--merge SOURCE | --add | --remove | --clear | --enable | --disable)... [-b source_file [-F source_fmt]] [-g granularity] [--object objectdef] [--image-opts | -f fmt] filename bitmap",
  "check [--object objectdef] [--image-opts] [-q] [-f fmt] [--output=ofmt] [-r [leaks | all]] [-T src_cache] [-U] filename",
  "commit [--object objectdef] [--image-opts] [-q] [-f fmt] [-t cache] [-b base] [-r rate_limit] [-d] [-p] filename",
  "compare [--object objectdef] [--image-opts] [-f fmt] [-F fmt] [-T src_cache] [-p] [-q] [-s] [-U] filename1 filename2",
  "convert [--object objectdef] [--image-opts] [--target-image-opts] [--target-is-zero] [--bitmaps] [-U] [-C] [-c] [-p] [-q] [-n] [-f fmt] [-t cache] [-T src_cache] [-O output_fmt] [-B backing_file [-F backing_fmt]] [-o options] [-l snapshot_param] [-S sparse_size] [-r rate_limit] [-m num_coroutines] [-W] [--salvage] filename [filename2 [...]] output_filename",
  "create [--object objectdef] [-q] [-f fmt] [-b backing_file [-F backing_fmt]] [-u] [-o options] filename [size]",
  "dd [--image-opts] [-U] [-f fmt] [-O output_fmt] [bs=block_size] [count=blocks] [skip=blocks] if=input of=output",
  "info [--object objectdef] [--image-opts] [-f fmt] [--output=ofmt] [--backing-chain] [-U] filename",
  "map [--object objectdef] [--image-opts] [-f fmt] [--start-offset=offset] [--max-length=len] [--output=ofmt] [-U] filename",
  "measure [--output=ofmt] [-O output_fmt] [-o options] [--size N | [--object objectdef] [--image-opts] [-f fmt] [-l snapshot_param] filename]",
  "snapshot [--object objectdef] [--image-opts] [-U] [-q] [-l | -a snapshot | -c snapshot | -d snapshot] filename",
  "rebase [--object objectdef] [--image-opts] [-U] [-q] [-f fmt] [-t cache] [-T src_cache] [-p] [-u] -b backing_file [-F backing_fmt] filename",
  "resize [--object objectdef] [--image-opts] [-f fmt] [--preallocation=prealloc] [-q] [--shrink] filename [+ | -]size",
];

/** The help text (`--help`) for the subcommands blockgraph has. */
export function imgUsage(graph: Graph): string {
  const formats = graph.registry.all().map((d) => d.name).sort().join(" ");
  return IMG_VERSION +
    "usage: qemu-img [standard options] command [command options]\n" +
    "QEMU disk image utility\n\n" +
    "    '-h', '--help'       display this help and exit\n" +
    "    '-V', '--version'    output version information and exit\n\n" +
    "Command syntax:\n" +
    SYNTAX.map((l) => `  ${l}\n`).join("") + "\n" +
    `Supported formats: ${formats}\n`;
}

const SUBCOMMANDS: Record<
  string,
  (graph: Graph, args: readonly string[], io: CliIo) => Promise<number>
> = {
  amend: imgAmend,
  bench: imgBench,
  bitmap: (graph, args, io) => imgBitmap(graph, args, io, () => imgUsage(graph)),
  check: imgCheck,
  commit: imgCommit,
  compare: imgCompare,
  convert: imgConvert,
  create: imgCreate,
  dd: imgDd,
  info: imgInfo,
  map: imgMap,
  measure: imgMeasure,
  rebase: imgRebase,
  resize: imgResize,
  snapshot: imgSnapshot,
};

/**
 * Runs qemu-img with `args` (without the program name); returns the exit status.
 *
 * @example
 * ```ts
 * import { captureIo } from "../common/cli_io.ts";
 * import { runImg } from "./run_img.ts";
 * const io = captureIo();
 * console.assert(await runImg([], io) === 1);
 * console.assert(io.stderr.startsWith("qemu-img: Not enough arguments"));
 * ```
 */
export async function runImg(args: readonly string[], io: CliIo): Promise<number> {
  const graph = new Graph({ registry: defaultRegistry() });
  try {
    const r = getopt(args, "+:hVT:", [
      { name: "help", arg: "none", key: "h" },
      { name: "version", arg: "none", key: "V" },
      { name: "trace", arg: "required", key: "T" },
    ]);
    if (r.error) return imgOptionError(io, r.error);
    for (const o of r.options) {
      if (o.key === "h") {
        io.out(imgUsage(graph));
        return 0;
      }
      if (o.key === "V") {
        io.out(IMG_VERSION);
        return 0;
      }
    }
    if (r.operands.length === 0) return imgErrorExit(io, "Not enough arguments");
    const name = r.operands[0]!;
    const sub = SUBCOMMANDS[name];
    if (!sub) return imgErrorExit(io, `Command not found: ${name}`);
    return await sub(graph, r.operands.slice(1), io);
  } finally {
    await graph.closeAll();
  }
}
