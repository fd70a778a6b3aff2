/**
 * The three ways a benchmark run is made, each returning the same {@link Measurement}:
 *
 * - ours: `blockgraph img bench --output=json` in this process (the CLI's own code path, with
 *   the process CPU time it measures over the timed window: `Deno.cpuUsage`, every thread of
 *   the process, so the engine's worker threads, the kernel's io-wq workers of our rings and
 *   V8's helpers count against us; and the event-loop lag over the same window);
 * - `qemu-img bench` as a child process: its time from "Run completed in", its CPU from
 *   `getrusage(RUSAGE_CHILDREN)` around the child, less the CPU of the same command with
 *   `-c 0` (start-up, open and close), so that only the request loop is charged;
 * - `fio` as a child process: IOPS and runtime from `--output-format=json`; CPU measured the
 *   same whole-process way as qemu-img's (`RUSAGE_CHILDREN` around the child, which counts
 *   every thread of fio and of the job process it forks and reaps, io_uring's io-wq workers
 *   included, less the median of three one-request runs of the same job). fio's own
 *   `usr_cpu + sys_cpu` is `getrusage(RUSAGE_THREAD)` of the job thread alone, which leaves
 *   out the io-wq worker that does buffered io_uring writes (and most buffered I/O that
 *   cannot complete inline); it is kept as {@link Measurement.reportedCpuMicros} for the note.
 *
 * @module
 */

import { captureIo, runImg } from "@blockgraph/cli";
import type { LoopLag } from "../packages/cli/img/bench.ts";
import { childrenCpuMicros } from "./rusage.ts";

/** What one run measured. */
export interface Measurement {
  /** Requests completed. */
  readonly requests: number;
  /** Wall time of the request loop, in seconds. */
  readonly seconds: number;
  /** CPU time (user plus system) of the request loop, in microseconds. */
  readonly cpuMicros: number;
  /** The CPU time the tool itself reported, where its scope differs (fio: the job thread). */
  readonly reportedCpuMicros?: number;
  /** Event-loop lag over the run (ours, in-process runs only). */
  readonly lag?: Pick<LoopLag, "p99Ms" | "maxMs">;
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
      lag: { p99Ms: j["lag-p99-ms"]!, maxMs: j["lag-max-ms"]! },
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

async function fioOnce(job: FioJob, count: number) {
  const before = childrenCpuMicros();
  const out = await new Deno.Command("fio", { args: fioArgs(job, count), stderr: "piped" })
    .output();
  const cpuMicros = childrenCpuMicros() - before;
  const text = new TextDecoder().decode(out.stdout);
  if (!out.success) {
    throw new Error(`fio failed: ${new TextDecoder().decode(out.stderr)}${text}`);
  }
  // fio may print notices before the JSON document.
  const j = JSON.parse(text.slice(text.indexOf("{")));
  const job0 = j.jobs[0];
  const side = job.rw.endsWith("read") ? job0.read : job0.write;
  const cpuPercent = (job0.usr_cpu as number) + (job0.sys_cpu as number);
  return {
    requests: side.total_ios as number,
    seconds: (side.runtime as number) / 1000,
    cpuMicros,
    reportedCpuMicros: cpuPercent / 100 * (job0.job_runtime as number) * 1000,
  };
}

/**
 * `fio` in a child process: requests and runtime from its JSON report, CPU whole-process
 * (every thread, io-wq workers included) less its fixed cost (median of three one-request
 * runs), its own job-thread figure kept beside.
 */
export function fioRunner(job: FioJob, count: number): Runner {
  let baseline: number | null = null;
  return async () => {
    if (baseline === null) {
      const idle: number[] = [];
      for (let i = 0; i < 3; i++) idle.push((await fioOnce(job, 1)).cpuMicros);
      baseline = median(idle);
    }
    const r = await fioOnce(job, count);
    return { ...r, cpuMicros: Math.max(0, r.cpuMicros - baseline) };
  };
}
