/**
 * `blockgraph img bench`: qemu-img 7.2's `bench [-c count] [-d depth] [-f fmt]
 * [--flush-interval=N] [--no-drain] [-n] [-i aio] [-o offset] [--pattern=N] [-q] [-s size]
 * [-S step] [-t cache] [-w] [-U] [--image-opts] filename`, with its defaults (75000 requests of
 * 4 KiB, 64 in parallel, cache=writeback), its messages and exit statuses, and its two output
 * lines, so scripts can swap the two tools. `--output=json` prints one JSON object instead,
 * adding IOPS, MiB/s, process CPU time per request and the event-loop lag over the run (a
 * 10 ms interval timer runs beside the request loop, in JSON mode only, and its lateness is
 * reported: the engine shares the event loop with devices, exports and the monitor).
 *
 * Two departures, both where qemu-img 7.2 misbehaves: `-d 0` with requests to send is refused
 * ("Invalid queue depth specified") where qemu-img waits forever, and an empty image is
 * benchmarked at offset 0 where qemu-img divides by zero.
 *
 * @module
 */

import { BlockError, type Graph, strerror, unflatten } from "@blockgraph/core";
import type { CliIo } from "../common/cli_io.ts";
import { cvtnum, hexSuffixWarning } from "../common/cvtnum.ts";
import { getopt } from "../common/getopt.ts";
import {
  type CacheMode,
  type OpenedImage,
  openImage,
  parseAioMode,
  parseCacheMode,
} from "../common/open_image.ts";
import { parseQemuOpts } from "../common/qemu_opts.ts";
import { strtol0 } from "../io/command.ts";
import { type BenchParams, BenchRequestError, type BenchResult, runBench } from "./bench_loop.ts";
import { imgError, imgErrorExit, imgOptionError } from "./img_common.ts";
import { imgCommonOption } from "./img_help.ts";
import { fixed } from "../common/format.ts";

const INT_MAX = 2 ** 31 - 1;
const INT64_MAX = (1n << 63n) - 1n;

/** qemu-img bench's cache mode when `-t` is absent: writeback, through the host cache. */
export const BENCH_DEFAULT_CACHE: CacheMode = {
  direct: false,
  noFlush: false,
  writethrough: false,
};

/** Everything `img bench` was asked to do. */
export interface BenchOptions extends BenchParams {
  /** The image filename, or its options with `--image-opts`. */
  readonly filename: string;
  /** The format (`-f`). */
  readonly format: string | undefined;
  /** Whether `filename` is a set of options (`--image-opts`). */
  readonly imageOpts: boolean;
  /** The cache mode (`-t`). */
  readonly cache: CacheMode;
  /** The AIO engine of the protocol node (`-i`, `-n`). */
  readonly aio: string | undefined;
  /** Share every permission with other users (`-U`). */
  readonly forceShare: boolean;
  /** `human` (qemu-img's two lines) or `json`. */
  readonly output: "human" | "json";
}

/** qemu_strtoul in base 0, bounded by `max`; `null` when out of range or not a number. */
function unsignedArg(text: string, max: number): number | null {
  const v = strtol0(text);
  if (v === null) return null;
  if (Object.is(v, -0)) return 0;
  // strtoul reads "-5" as a value near 2^64, which no bound here admits.
  return v < 0 || v > max ? null : v;
}

/** qemu-img's `cvtnum_full`: a size in `[0, max]`, or `null` after printing its message. */
function sizeArg(io: CliIo, name: string, text: string, max: bigint): number | null {
  const r = cvtnum(text);
  if (r.hexSuffix) io.err(hexSuffixWarning("qemu-img", text) + "\n");
  if (r.error === "ERANGE" || (r.value !== undefined && r.value > max)) {
    imgError(io, `Invalid ${name} specified. Must be between 0 and ${max}.`);
    return null;
  }
  if (r.value === undefined) {
    imgError(io, `Invalid ${name} specified. You may use k, M, G, T, P or E suffixes for`);
    imgError(io, "kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.");
    return null;
  }
  return Number(r.value);
}

/**
 * Parses `img bench` arguments as qemu-img 7.2 does, printing its message for the first
 * problem; returns the options or the exit status.
 */
export function parseBenchArgs(
  graph: Graph,
  args: readonly string[],
  io: CliIo,
): BenchOptions | number {
  const r = getopt(args, ":hc:d:f:ni:o:qs:S:t:wU", [
    { name: "help", arg: "none", key: "h" },
    { name: "flush-interval", arg: "required", key: "flush-interval" },
    { name: "image-opts", arg: "none", key: "image-opts" },
    { name: "pattern", arg: "required", key: "pattern" },
    { name: "no-drain", arg: "none", key: "no-drain" },
    { name: "force-share", arg: "none", key: "U" },
    { name: "output", arg: "required", key: "output" },
  ]);
  let count = 75000;
  let depth = 64;
  let size = 4096;
  let step = 0;
  let offset = 0;
  let write = false;
  let pattern = 0;
  let flushInterval = 0;
  let drainOnFlush = true;
  let format: string | undefined;
  let imageOpts = false;
  let cache = BENCH_DEFAULT_CACHE;
  let aio: string | undefined;
  let forceShare = false;
  let output = "human";
  for (const o of r.options) {
    const stop = imgCommonOption(graph, io, o);
    if (stop !== null) return stop;
    const v = o.value ?? "";
    switch (o.key) {
      case "c": {
        const n = unsignedArg(v, INT_MAX);
        if (n === null) return fail(io, "Invalid request count specified");
        count = n;
        break;
      }
      case "d": {
        const n = unsignedArg(v, INT_MAX);
        if (n === null) return fail(io, "Invalid queue depth specified");
        depth = n;
        break;
      }
      case "f":
        format = v;
        break;
      case "n":
        aio = "native";
        break;
      case "i": {
        const mode = parseAioMode(v);
        if (mode === null) return fail(io, `Invalid aio option: ${v}`);
        aio = mode;
        break;
      }
      case "o": {
        const n = sizeArg(io, "offset", v, INT64_MAX);
        if (n === null) return 1;
        offset = n;
        break;
      }
      case "s": {
        const n = sizeArg(io, "buffer size", v, BigInt(INT_MAX));
        if (n === null) return 1;
        size = n;
        break;
      }
      case "S": {
        const n = sizeArg(io, "step_size", v, BigInt(INT_MAX));
        if (n === null) return 1;
        step = n;
        break;
      }
      case "t": {
        const mode = parseCacheMode(v);
        if (mode === null) return fail(io, "Invalid cache mode");
        cache = mode;
        break;
      }
      case "w":
        write = true;
        break;
      case "U":
        forceShare = true;
        break;
      case "pattern": {
        const n = unsignedArg(v, 0xff);
        if (n === null) return fail(io, "Invalid pattern byte specified");
        pattern = n;
        break;
      }
      case "flush-interval": {
        const n = unsignedArg(v, INT_MAX);
        if (n === null) return fail(io, "Invalid flush interval specified");
        flushInterval = n;
        break;
      }
      case "no-drain":
        drainOnFlush = false;
        break;
      case "image-opts":
        imageOpts = true;
        break;
      case "output":
        output = v;
        break;
    }
  }
  if (r.error) return imgOptionError(io, r.error);
  if (output !== "human" && output !== "json") {
    return fail(io, "--output must be used with human or json as argument.");
  }
  if (r.operands.length !== 1) return imgErrorExit(io, "Expecting one image file name");
  if (!write && flushInterval) {
    return fail(io, "--flush-interval is only available in write tests");
  }
  if (flushInterval && flushInterval < depth) {
    return fail(io, "Flush interval can't be smaller than depth");
  }
  if (depth === 0 && count > 0) return fail(io, "Invalid queue depth specified");
  if (imageOpts && format !== undefined) {
    return fail(io, "--image-opts and --format are mutually exclusive");
  }
  return {
    filename: r.operands[0]!,
    format,
    imageOpts,
    cache,
    aio,
    forceShare,
    output,
    count,
    depth,
    size,
    step: step || size,
    offset,
    write,
    pattern,
    flushInterval,
    drainOnFlush,
  };
}

function fail(io: CliIo, message: string): number {
  imgError(io, message);
  return 1;
}

/** qemu-img bench's opening line(s). */
export function benchHeader(o: BenchParams): string {
  let text = `Sending ${o.count} ${o.write ? "write" : "read"} requests, ${o.size} bytes each, ` +
    `${o.depth} in parallel (starting at offset ${o.offset}, step size ${o.step || o.size})\n`;
  if (o.flushInterval) text += `Sending flush every ${o.flushInterval} requests\n`;
  return text;
}

/** qemu-img bench's closing line: `Run completed in 1.234 seconds.` */
export function benchSummary(seconds: number): string {
  return `Run completed in ${fixed(seconds, 3)} seconds.\n`;
}

/** How late an interval timer fired while a run was in progress. */
export interface LoopLag {
  /** The 99th percentile of the lateness, in milliseconds. */
  readonly p99Ms: number;
  /** The largest lateness, in milliseconds. */
  readonly maxMs: number;
  /** How many times the timer fired (plus one for a tick overdue when the meter stopped). */
  readonly samples: number;
}

/** The period of the timer {@link lagMeter} runs by default, in milliseconds. */
export const LAG_INTERVAL_MS = 10;

/**
 * Starts an interval timer of `intervalMs` that records, at each tick, how much later than
 * its period it ran (the time the event loop was busy elsewhere: a synchronous stretch in the
 * engine shows up here as one late tick). The returned function stops the timer and returns
 * the p99 and max lateness (the same figures on later calls); a tick overdue at that moment
 * counts with its lateness so far, so a block at the very end of a run is not missed.
 */
export function lagMeter(intervalMs: number = LAG_INTERVAL_MS): () => LoopLag {
  const late: number[] = [];
  let last = performance.now();
  const timer = setInterval(() => {
    const now = performance.now();
    late.push(Math.max(0, now - last - intervalMs));
    last = now;
  }, intervalMs);
  let result: LoopLag | null = null;
  const stop = (): LoopLag => {
    clearInterval(timer);
    const overdue = performance.now() - last - intervalMs;
    if (overdue > 0) late.push(overdue);
    if (late.length === 0) return { p99Ms: 0, maxMs: 0, samples: 0 };
    late.sort((a, b) => a - b);
    const p99 = late[Math.max(0, Math.ceil(late.length * 0.99) - 1)]!;
    return { p99Ms: p99, maxMs: late[late.length - 1]!, samples: late.length };
  };
  return () => result ??= stop();
}

/**
 * The `--output=json` object of a run: the parameters, the time, and what follows from them;
 * with `lag`, the event-loop lag over the run.
 */
export function benchJson(o: BenchParams, r: BenchResult, lag?: LoopLag): Record<string, unknown> {
  const cpu = r.cpuUserMicros + r.cpuSystemMicros;
  const lagFields = lag === undefined ? {} : {
    "lag-p99-ms": lag.p99Ms,
    "lag-max-ms": lag.maxMs,
    "lag-samples": lag.samples,
  };
  return {
    requests: o.count,
    "request-size": o.size,
    depth: o.depth,
    offset: o.offset,
    step: o.step || o.size,
    write: o.write,
    "flush-interval": o.flushInterval,
    seconds: r.seconds,
    iops: r.seconds > 0 ? o.count / r.seconds : 0,
    "mib-per-second": r.seconds > 0 ? o.count * o.size / r.seconds / 1048576 : 0,
    "cpu-user-us": r.cpuUserMicros,
    "cpu-system-us": r.cpuSystemMicros,
    "cpu-us-per-request": o.count > 0 ? cpu / o.count : 0,
    ...lagFields,
  };
}

/** Runs `img bench` with `args` (after `bench`); returns the exit status. */
export async function imgBench(graph: Graph, args: readonly string[], io: CliIo): Promise<number> {
  const o = parseBenchArgs(graph, args, io);
  if (typeof o === "number") return o;
  let image: OpenedImage;
  try {
    image = await openImage(graph, {
      filename: o.imageOpts ? null : o.filename,
      format: o.format,
      options: o.imageOpts ? unflatten(parseQemuOpts(o.filename).values) : {},
      readOnly: !o.write,
      cache: o.cache,
      discard: "ignore",
      aio: o.aio,
      forceShare: o.forceShare,
    }, (text) => io.err(text));
  } catch (e) {
    imgError(io, `Could not open '${o.filename}': ${BlockError.from(e).message}`);
    return 1;
  }
  try {
    if (o.output === "human") io.out(benchHeader(o));
    let result: BenchResult;
    let lag: LoopLag | undefined;
    const stopLag = o.output === "json" ? lagMeter() : null;
    try {
      result = await runBench(image.backend, o);
    } catch (e) {
      if (e instanceof BenchRequestError) {
        const what = e.flush ? "Failed flush request" : "Failed request";
        imgError(io, `${what}: ${strerror(e.error.code)}`);
        return 1;
      }
      if (e instanceof RangeError) {
        imgError(io, `Could not allocate ${o.depth * o.size} bytes of request buffers`);
        return 1;
      }
      throw e;
    } finally {
      lag = stopLag?.();
    }
    if (o.output === "json") io.out(JSON.stringify(benchJson(o, result, lag), null, 4) + "\n");
    else io.out(benchSummary(result.seconds));
    return 0;
  } finally {
    await image.backend.unref();
  }
}
