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
import { IMG_VERSION, imgHelp } from "./img_help.ts";
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

const SUBCOMMANDS: Record<
  string,
  (graph: Graph, args: readonly string[], io: CliIo) => Promise<number>
> = {
  amend: imgAmend,
  bench: imgBench,
  bitmap: imgBitmap,
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
    // Options act in order, as qemu-img meets them: `-h --bogus` prints the help.
    for (const o of r.options) {
      if (o.key === "h") return imgHelp(graph, io);
      if (o.key === "V") {
        io.out(IMG_VERSION);
        return 0;
      }
    }
    if (r.error) return imgOptionError(io, r.error);
    if (r.operands.length === 0) return imgErrorExit(io, "Not enough arguments");
    const name = r.operands[0]!;
    const sub = SUBCOMMANDS[name];
    if (!sub) return imgErrorExit(io, `Command not found: ${name}`);
    return await sub(graph, r.operands.slice(1), io);
  } finally {
    await graph.closeAll();
  }
}
