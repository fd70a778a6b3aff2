/**
 * The three ways a benchmark run is made, each returning the same {@link Measurement}:
 *
 * - ours: `blockgraph img bench --output=json` in this process (the CLI's own code path, with
 *   the process CPU time it measures over the timed window: `Deno.cpuUsage`, every thread of
 *   the process, so the engine's worker threads and V8's helpers count against us);
 * - `qemu-img bench` as a child process: its time from "Run completed in", its CPU from
 *   `getrusage(RUSAGE_CHILDREN)` around the child, less the CPU of the same command with
 *   `-c 0` (start-up, open and close), so that only the request loop is charged;
 * - `fio` as a child process: IOPS and runtime from `--output-format=json`, CPU as the job's
 *   `usr_cpu + sys_cpu` (percent of the job's runtime), as fio reports it.
 *
 * @module
 */

import { captureIo, runImg } from "@blockgraph/cli";
import { childrenCpuMicros } from "./rusage.ts";

/** What one run measured. */
export interface Measurement {
  /** Requests completed. */
  readonly requests: number;
  /** Wall time of the request loop, in seconds. */
  readonly seconds: number;
  /** CPU time (user plus system) of the request loop, in microseconds. */
  readonly cpuMicros: number;
}

/** Makes one run. */
export type Runner = () => Promise<Measurement>;

/** `img bench` arguments for `count` requests (the rest fixed by the case). */
export type BenchArgs = (count: number) => string[];

/** Ours: `blockgraph img bench` in this process. */
export function oursRunner(args: BenchArgs, count: number): Runner {
  return async () => {
    const io = captureIo();
    const status = await runImg(["bench", "--output=json", ...args(count)], io);
    if (status !== 0) throw new Error(`blockgraph img bench failed: ${io.stderr}`);
    const j = JSON.parse(io.stdout) as Record<string, number>;
    return {
      requests: j.requests!,
      seconds: j.seconds!,
      cpuMicros: j["cpu-user-us"]! + j["cpu-system-us"]!,
    };
  };
}

async function qemuImgOnce(args: string[]): Promise<{ seconds: number; cpuMicros: number }> {
  const before = childrenCpuMicros();
  const out = await new Deno.Command("qemu-img", { args: ["bench", ...args], stderr: "piped" })
    .output();
  const cpuMicros = childrenCpuMicros() - before;
  const m = /Run completed in ([\d.]+) seconds/.exec(new TextDecoder().decode(out.stdout));
  if (!out.success || !m) {
    throw new Error(
      `qemu-img bench ${args.join(" ")} failed: ${new TextDecoder().decode(out.stderr)}`,
    );
  }
  return { seconds: Number(m[1]), cpuMicros };
}

/** The median of `xs` (the mean of the middle two for an even count). */
export function median(xs: readonly number[]): number {
  if (xs.length === 0) throw new RangeError("Median of no values");
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

/** `qemu-img bench` in a child process, its fixed cost (a `-c 0` run, median of 3) subtracted. */
export function qemuImgRunner(args: BenchArgs, count: number): Runner {
  let baseline: number | null = null;
  return async () => {
    if (baseline === null) {
      const idle: number[] = [];
      for (let i = 0; i < 3; i++) idle.push((await qemuImgOnce(args(0))).cpuMicros);
      baseline = median(idle);
    }
    const r = await qemuImgOnce(args(count));
    return { requests: count, seconds: r.seconds, cpuMicros: Math.max(0, r.cpuMicros - baseline) };
  };
}

/** One fio job. */
export interface FioJob {
  /** The file. */
  readonly filename: string;
  /** The file size in bytes (the region the job covers). */
  readonly size: number;
  /** `read`, `randread`, `write`, `randwrite`. */
  readonly rw: "read" | "randread" | "write" | "randwrite";
  /** Bytes per request. */
  readonly bs: number;
  /** Requests in flight. */
  readonly depth: number;
  /** O_DIRECT. */
  readonly direct: boolean;
  /** The I/O engine (`io_uring`, `libaio`, ...). */
  readonly engine: string;
}

/** The fio command line for `job` and `count` requests. */
export function fioArgs(job: FioJob, count: number): string[] {
  return [
    "--name=bench",
    `--filename=${job.filename}`,
    `--ioengine=${job.engine}`,
    `--direct=${job.direct ? 1 : 0}`,
    `--rw=${job.rw}`,
    `--bs=${job.bs}`,
    `--iodepth=${job.depth}`,
    `--size=${job.size}`,
    `--io_size=${count * job.bs}`,
    // fio drops the file's cached pages before a job by default; the page-cache case needs them.
    "--invalidate=0",
    "--output-format=json",
  ];
}

/** `fio` in a child process, measured by its own JSON report. */
export function fioRunner(job: FioJob, count: number): Runner {
  return async () => {
    const out = await new Deno.Command("fio", { args: fioArgs(job, count), stderr: "piped" })
      .output();
    const text = new TextDecoder().decode(out.stdout);
    if (!out.success) {
      throw new Error(`fio failed: ${new TextDecoder().decode(out.stderr)}${text}`);
    }
    // fio may print notices before the JSON document.
    const j = JSON.parse(text.slice(text.indexOf("{")));
    const job0 = j.jobs[0];
    const side = job.rw.endsWith("read") ? job0.read : job0.write;
    const requests = side.total_ios as number;
    const runtimeMs = side.runtime as number;
    const cpuPercent = (job0.usr_cpu as number) + (job0.sys_cpu as number);
    return {
      requests,
      seconds: runtimeMs / 1000,
      cpuMicros: cpuPercent / 100 * (job0.job_runtime as number) * 1000,
    };
  };
}
