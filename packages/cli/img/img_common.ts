/**
 * What qemu-img's subcommands share: its error wording (`qemu-img: ...`, the "Try
 * 'qemu-img --help'" hint) and its option-error messages.
 *
 * @module
 */

import {
  type BlockDriver,
  BlockError,
  type Graph,
  type OptionValues,
  unflatten,
} from "@blockgraph/core";
import type { CliIo } from "../common/cli_io.ts";
import { hexSuffixWarning, strtosz } from "../common/cvtnum.ts";
import type { GetoptError } from "../common/getopt.ts";
import { type OpenedImage, openImage, parseCacheMode } from "../common/open_image.ts";
import { parseQemuOpts } from "../common/qemu_opts.ts";

/** qemu-img's `error_report`: prints `qemu-img: message`. */
export function imgError(io: CliIo, message: string): void {
  io.err(`qemu-img: ${message}\n`);
}

/** Prints `e` as qemu-img's error_reportf_err does: prefix, message, then any hint. */
export function imgReportError(io: CliIo, prefix: string, e: unknown): void {
  const err = BlockError.from(e);
  imgError(io, `${prefix}${err.message}`);
  if (err.hint) io.err(err.hint);
}

/**
 * The format driver `name` when it can create images; otherwise prints qemu-img's error
 * ("Unknown file format 'x'", "Format driver 'x' does not support image creation") and
 * returns null.
 */
export function creatableFormat(graph: Graph, io: CliIo, name: string): BlockDriver | null {
  const drv = graph.registry.find(name);
  if (!drv) {
    imgError(io, `Unknown file format '${name}'`);
    return null;
  }
  if (!drv.create) {
    imgError(io, `Format driver '${name}' does not support image creation`);
    return null;
  }
  return drv;
}

/** qemu-img's `error_exit`: the message and the `--help` hint; returns exit status 1. */
export function imgErrorExit(io: CliIo, message: string): number {
  io.err(`qemu-img: ${message}\nTry 'qemu-img --help' for more information\n`);
  return 1;
}

/** qemu-img's messages for a bad option (`unrecognized option '-x'`), then exit status 1. */
export function imgOptionError(io: CliIo, e: GetoptError): number {
  if (e.kind === "missing" || e.kind === "long-missing") {
    return imgErrorExit(io, `missing argument for option '${e.word}'`);
  }
  return imgErrorExit(io, `unrecognized option '${e.word}'`);
}

/** qemu-img's `cvtnum_full`: a size within `[min, max]`, or its two-line message and `null`. */
export function imgCvtnum(
  io: CliIo,
  name: string,
  text: string,
  min = 0,
  max = Number.MAX_SAFE_INTEGER,
): number | null {
  const r = strtosz(text);
  if (r.hexSuffix) io.err(hexSuffixWarning("qemu-img", text) + "\n");
  if (r.error === "EINVAL" || (r.value === undefined && r.error !== "ERANGE")) {
    imgError(io, `Invalid ${name} specified. You may use k, M, G, T, P or E suffixes for`);
    imgError(io, "kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.");
    return null;
  }
  const maxText = max === Number.MAX_SAFE_INTEGER ? INT64_MAX_TEXT : String(max);
  if (r.error === "ERANGE" || r.value! > BigInt(max) || r.value! < BigInt(min)) {
    imgError(io, `Invalid ${name} specified. Must be between ${min} and ${maxText}.`);
    return null;
  }
  return Number(r.value!);
}

const INT64_MAX_TEXT = "9223372036854775807";

/** `--output=human|json`: the format, or qemu-img's message and `null`. */
export function imgOutputFormat(io: CliIo, value: string): "human" | "json" | null {
  if (value === "human" || value === "json") return value;
  imgError(io, "--output must be used with human or json as argument.");
  return null;
}

/**
 * The `write-behind` window of the `file` nodes of an image written in bulk and flushed at the
 * end (see {@link ImgOpen.bulkWrite}). qemu-img leaves the whole copy dirty in the page cache
 * until its final flush, which then waits for the disk to write all of it; starting writeback
 * every 16 MiB overlaps the disk's writing with the copy, and the flush waits for the tail.
 * `img convert -t writeback` of a 1 GiB half-allocated image on this machine's disk, 5-6
 * alternating runs of the bundled command: qcow2 -> raw 415-530 ms without, 309-378 ms with
 * (qemu-img 401-774 ms); raw -> qcow2 485-537 ms without, 350-401 ms with (qemu-img 416-521
 * ms). Python copies with 8 and 32 MiB windows were alike.
 */
export const BULK_WRITE_BEHIND = 16 << 20;

/** How a subcommand opens an image. */
export interface ImgOpen {
  /** The filename, or with `imageOpts` the option string. */
  readonly filename: string;
  /** `-f`. */
  readonly format?: string | undefined;
  /** `--image-opts`. */
  readonly imageOpts?: boolean;
  /** Open read-only. */
  readonly readOnly: boolean;
  /** `-U`. */
  readonly forceShare?: boolean;
  /**
   * Let no one else write the image while it is open (QEMU's `BDRV_O_NO_SHARE`, which
   * `convert` takes for its sources: a copy of an image someone writes is no copy).
   */
  readonly noShare?: boolean;
  /** The cache mode name (default `writeback`). */
  readonly cache?: string;
  /** Open without the backing chain (`backing: null`). */
  readonly noBacking?: boolean;
  /** Pass discards down (`unmap`) instead of dropping them. */
  readonly unmap?: boolean;
  /** Open for `check`. */
  readonly forCheck?: boolean;
  /**
   * The command writes the image in bulk and flushes it at the end (`convert`, `dd`, the
   * base of `commit`, the overlay of a safe `rebase`): with a
   * cache mode that flushes and is not O_DIRECT, its `file` nodes start writeback behind the
   * writes ({@link BULK_WRITE_BEHIND}).
   */
  readonly bulkWrite?: boolean;
  /** Open for the metadata only (`img info`; see `OpenRequest.noIo`). */
  readonly noIo?: boolean;
  /** What precedes the reason when the open fails (default `Could not open 'filename': `). */
  readonly failurePrefix?: string;
  /** Further options of the top node (a new `convert` target's `encrypt.key-secret`). */
  readonly options?: OptionValues;
}

/**
 * qemu-img's `img_open`: opens an image in a Backend, or prints "Could not open 'name': why"
 * (and the probing warning where QEMU gives it) and returns `null`.
 */
export async function imgOpen(graph: Graph, io: CliIo, o: ImgOpen): Promise<OpenedImage | null> {
  if (o.imageOpts && o.format !== undefined) {
    imgError(io, "--image-opts and --format are mutually exclusive");
    return null;
  }
  const cache = parseCacheMode(o.cache ?? "writeback");
  if (!cache) {
    imgError(io, `Invalid cache option: ${o.cache}`);
    return null;
  }
  if (!o.imageOpts && o.filename === "") {
    imgError(io, "Could not open '': The 'file' block driver requires a file name");
    return null;
  }
  let options: OptionValues = { ...o.options };
  if (o.imageOpts) {
    // qemu-img parses the string with `file` as the implied first option.
    const parsed = parseQemuOpts(o.filename, "file");
    for (const w of parsed.warnings) imgError(io, w);
    options = { ...options, ...unflatten(parsed.values) };
  }
  try {
    return await openImage(graph, {
      filename: o.imageOpts ? null : o.filename,
      format: o.format,
      options,
      readOnly: o.readOnly,
      cache,
      discard: o.unmap ? "unmap" : "ignore",
      forceShare: o.forceShare ?? false,
      noShare: o.noShare ?? false,
      noBacking: o.noBacking ?? false,
      forCheck: o.forCheck ?? false,
      noIo: o.noIo ?? false,
      writeBehind: o.bulkWrite && !cache.direct && !cache.noFlush ? BULK_WRITE_BEHIND : 0,
    }, (text) => io.err(text));
  } catch (e) {
    imgReportError(io, o.failurePrefix ?? `Could not open '${o.filename}': `, e);
    return null;
  }
}
