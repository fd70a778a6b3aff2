/**
 * `blockgraph img check`: qemu-img's `check [-f fmt] [-r leaks|all] [--output=human|json] [-q]
 * [-T src_cache] [-U] [--image-opts] filename`, printing the format driver's check result
 * with qemu-img's text and exit statuses (0 clean, 1 check failed, 2 corruptions, 3 leaks,
 * 63 not supported).
 *
 * @module
 */

import { BlockError, type Graph } from "@blockgraph/core";
import type { Qcow2CheckResult, Qcow2RepairMode } from "@blockgraph/drivers";
import type { CliIo } from "../common/cli_io.ts";
import { fixed } from "../common/format.ts";
import { getopt } from "../common/getopt.ts";
import { parseCacheMode } from "../common/open_image.ts";
import { qdictJson } from "../common/qdict_json.ts";
import { qcow2Of } from "./image_facts.ts";
import { imgError, imgErrorExit, imgOpen, imgOptionError, imgOutputFormat } from "./img_common.ts";
import { imgCommonOption } from "./img_help.ts";

/** A node that can check itself (the qcow2 instance's shape). */
export interface Checkable {
  /** Checks, repairing as asked. */
  check(repair: Qcow2RepairMode): Promise<Qcow2CheckResult>;
}

const REPAIR_MARK = "The following inconsistencies were found and repaired:";
const REPAIR_END = "Double checking the fixed image now...";

const pct = (a: number, b: number) => fixed(a * 100 / b, 2);

/** qemu-img's `dump_human_image_check`. */
export function humanCheck(c: Qcow2CheckResult): string {
  let out = "";
  if (!(c.corruptions || c.leaks || c["check-errors"])) {
    out += "No errors were found on the image.\n";
  } else {
    if (c.corruptions) {
      out += `\n${c.corruptions} errors were found on the image.\n` +
        "Data may be corrupted, or further writes to the image may corrupt it.\n";
    }
    if (c.leaks) {
      out += `\n${c.leaks} leaked clusters were found on the image.\n` +
        "This means waste of disk space, but no harm to data.\n";
    }
    if (c["check-errors"]) {
      out += `\n${c["check-errors"]} internal errors have occurred during the check.\n`;
    }
  }
  const total = c["total-clusters"];
  const alloc = c["allocated-clusters"];
  if (total !== 0 && alloc !== 0) {
    out += `${alloc}/${total} = ${pct(alloc, total)}% allocated, ` +
      `${pct(c["fragmented-clusters"], alloc)}% fragmented, ` +
      `${pct(c["compressed-clusters"], alloc)}% compressed clusters\n`;
  }
  if (c["image-end-offset"]) out += `Image end offset: ${c["image-end-offset"]}\n`;
  return out;
}

/** qemu-img's `ImageCheck` object: zero counts other than check-errors left out. */
export function checkJson(filename: string, format: string, c: Qcow2CheckResult): unknown {
  const out: Record<string, unknown> = {
    filename,
    format,
    "check-errors": c["check-errors"],
  };
  const optional = [
    "corruptions",
    "leaks",
    "corruptions-fixed",
    "leaks-fixed",
    "image-end-offset",
    "total-clusters",
    "allocated-clusters",
    "fragmented-clusters",
    "compressed-clusters",
  ] as const;
  for (const k of optional) if (c[k] !== 0) out[k] = c[k];
  return out;
}

/**
 * Prints a check result (messages to stderr, the repair summary and the report to stdout
 * unless quiet or JSON) and returns qemu-img's exit status.
 */
export function reportCheck(
  io: CliIo,
  c: Qcow2CheckResult,
  output: "human" | "json",
  quiet: boolean,
  filename: string,
  format: string,
): number {
  let toStdout = false;
  for (const line of c.messages) {
    if (line === REPAIR_MARK) toStdout = true;
    if (toStdout) {
      if (output === "human" && !quiet) io.out(line + "\n");
    } else io.err(line + "\n");
    if (line === REPAIR_END) toStdout = false;
  }
  if (c.failure !== undefined) {
    // qemu-img prints no summary when the check itself failed.
    imgError(io, `Check failed: ${c.failure}`);
    return 1;
  }
  if (output === "json") io.out(qdictJson(checkJson(filename, format, c)));
  else if (!quiet) io.out(humanCheck(c));
  if (c["check-errors"]) {
    imgError(io, "Check failed");
    return 1;
  }
  if (c.corruptions) return 2;
  if (c.leaks) return 3;
  return 0;
}

/** Runs `img check` with `args` (after `check`); returns the exit status. */
export async function imgCheck(graph: Graph, args: readonly string[], io: CliIo): Promise<number> {
  const r = getopt(args, ":hf:r:T:qU", [
    { name: "help", arg: "none", key: "h" },
    { name: "format", arg: "required", key: "f" },
    { name: "repair", arg: "required", key: "r" },
    { name: "object", arg: "required", key: "object" },
    { name: "output", arg: "required", key: "output" },
    { name: "image-opts", arg: "none", key: "image-opts" },
    { name: "force-share", arg: "none", key: "U" },
  ]);
  let format: string | undefined;
  let repair: Qcow2RepairMode = "none";
  let output = "human";
  let cache = "writeback";
  let quiet = false;
  let forceShare = false;
  let imageOpts = false;
  for (const o of r.options) {
    const stop = imgCommonOption(graph, io, o);
    if (stop !== null) return stop;
    const v = o.value!;
    if (o.key === "f") format = v;
    else if (o.key === "r") {
      if (v !== "leaks" && v !== "all") {
        return imgErrorExit(
          io,
          `Unknown option value for -r (expecting 'leaks' or 'all'): ${v}`,
        );
      }
      repair = v;
    } else if (o.key === "output") output = v;
    else if (o.key === "T") cache = v;
    else if (o.key === "q") quiet = true;
    else if (o.key === "U") forceShare = true;
    else if (o.key === "image-opts") imageOpts = true;
  }
  if (r.error) return imgOptionError(io, r.error);
  if (r.operands.length !== 1) return imgErrorExit(io, "Expecting one image file name");
  const filename = r.operands[0]!;
  const fmtOut = imgOutputFormat(io, output);
  if (!fmtOut) return 1;
  if (!parseCacheMode(cache)) {
    imgError(io, `Invalid source cache option: ${cache}`);
    return 1;
  }
  const image = await imgOpen(graph, io, {
    filename,
    format,
    imageOpts,
    readOnly: repair === "none",
    forceShare,
    cache,
    // qemu-img opens the backing chain too: a missing backing file fails the check.
    forCheck: true,
  });
  if (!image) return 1;
  try {
    const checker: Checkable | null = qcow2Of(image.node);
    if (!checker) {
      imgError(io, "This image format does not support checks");
      return 63;
    }
    let result: Qcow2CheckResult;
    try {
      result = await checker.check(repair);
    } catch (e) {
      imgError(io, `Check failed: ${BlockError.from(e).message}`);
      return 1;
    }
    return reportCheck(io, result, fmtOut, quiet, filename, image.node.driver.name);
  } finally {
    await image.backend.unref();
  }
}
