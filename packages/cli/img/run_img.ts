/**
 * `blockgraph img`: qemu-img's command line for the subcommands blockgraph has so far
 * (`bench`, `create`, `info`), with qemu-img's global options, messages and exit statuses.
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
import { imgInfo } from "./info.ts";
import { imgResize } from "./resize.ts";
import { imgSnapshot } from "./snapshot.ts";
import { imgMap } from "./map.ts";

/** The version text (`-V`). */
export const IMG_VERSION = "blockgraph img version 0.1.0 (speaks qemu-img 7.2)\n";

/** The help text (`--help`) for the subcommands blockgraph has. */
export function imgUsage(graph: Graph): string {
  const formats = graph.registry.all().map((d) => d.name).sort().join(" ");
  return IMG_VERSION +
    "usage: qemu-img [standard options] command [command options]\n" +
    "QEMU disk image utility\n\n" +
    "    '-h', '--help'       display this help and exit\n" +
    "    '-V', '--version'    output version information and exit\n\n" +
    "Command syntax:\n" +
    "  bench [-c count] [-d depth] [-f fmt] [--flush-interval=flush_interval] [-i aio] " +
    "[-n] [--no-drain] [-o offset] [--pattern=pattern] [-q] [-s buffer_size] [-S step_size] " +
    "[-t cache] [-w] [-U] [--image-opts] [--output=ofmt] filename\n" +
    "  create [--object objectdef] [-q] [-f fmt] [-b backing_file [-F backing_fmt]] [-u] " +
    "[-o options] filename [size]\n" +
    "  info [--object objectdef] [--image-opts] [-f fmt] [--output=ofmt] [--backing-chain] " +
    "[-U] filename\n\n" +
    `Supported formats: ${formats}\n`;
}

const SUBCOMMANDS: Record<
  string,
  (graph: Graph, args: readonly string[], io: CliIo) => Promise<number>
> = {
  bench: imgBench,
  check: imgCheck,
  compare: imgCompare,
  convert: imgConvert,
  create: imgCreate,
  info: imgInfo,
  map: imgMap,
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
