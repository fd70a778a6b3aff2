/**
 * `img convert` against `qemu-img convert` with the same options: a 1 GiB qcow2 with every
 * other MiB written (half allocated) to raw, and the raw image of the same content to qcow2.
 * One "request" is one whole conversion, so the IOPS ratio is qemu-img's wall time over ours
 * (and "CPU µs/req" is CPU per conversion, from child rusage). Both run as commands, timed
 * from spawn to exit, as a user or a script waits for them: ours is the bundled CLI that
 * `deno task build` makes (built afresh for the run, see {@link bundledCli}) under
 * `deno run -A`, so Deno's start-up and a cold JIT are in our time, as qemu-img's start-up is
 * in its. (Until session 5 ours ran in the benchmark's own process, warm and with its modules
 * loaded: 1.16x / 1.12x there, against 0.71x as a command run from source.) The in-process
 * run is still measured, without a target, as `(in-process)`: what a program that embeds the
 * library gets.
 * Part of `deno task bench` (`BENCH_CASES=convert` runs only these); also runs alone:
 * `deno run -A bench/convert.ts` (`BENCH_DIR`, `BENCH_ROUNDS`).
 *
 * @module
 */

import { captureIo, runImg } from "@blockgraph/cli";
import { lagMeter } from "../packages/cli/img/bench.ts";
import { processCpu } from "../packages/cli/img/bench_loop.ts";
import { buildCli } from "../tools/build_cli.ts";
import type { BenchCase } from "./harness.ts";
import type { Runner } from "./runners.ts";
import { childrenCpuMicros } from "./rusage.ts";

/** The source images of the convert cases. */
export interface ConvertImages {
  /** The directory holding them (and the targets). */
  readonly dir: string;
  /** The half-allocated raw image. */
  readonly raw: string;
  /** The same content as qcow2, written by qemu-img. */
  readonly qcow2: string;
  /** Removes the directory. */
  remove(): Promise<void>;
}

const MIB = 1 << 20;

/** Writes a `size`-byte raw image with random data in every other MiB, and its qcow2 copy. */
export async function makeConvertImages(size: number, parent?: string): Promise<ConvertImages> {
  const dir = await Deno.makeTempDir(
    parent === undefined ? { prefix: "bench-convert-" } : { dir: parent, prefix: "bench-convert-" },
  );
  const raw = `${dir}/half.raw`;
  const qcow2 = `${dir}/half.qcow2`;
  const f = await Deno.open(raw, { create: true, write: true, truncate: true });
  try {
    await f.truncate(size);
    const block = new Uint8Array(MIB);
    for (let at = 0; at < size; at += 2 * MIB) {
      for (let i = 0; i < MIB; i += 65536) crypto.getRandomValues(block.subarray(i, i + 65536));
      await f.seek(at, Deno.SeekMode.Start);
      for (let done = 0; done < MIB;) done += await f.write(block.subarray(done));
    }
  } finally {
    f.close();
  }
  const r = await new Deno.Command("qemu-img", { args: ["convert", "-O", "qcow2", raw, qcow2] })
    .output();
  if (!r.success) throw new Error(new TextDecoder().decode(r.stderr));
  return { dir, raw, qcow2, remove: () => Deno.remove(dir, { recursive: true }) };
}

async function removeIfThere(path: string): Promise<void> {
  await Deno.remove(path).catch(() => {});
}

/**
 * Ours as a library call: `img convert` in this process (modules loaded, code warm), timed
 * around the call, with the process's CPU
 * time and the event-loop lag over the same window. The case's `beforeEach` has removed the
 * target.
 */
function oursConvert(args: () => Promise<string[]>, target: () => Promise<string>): Runner {
  return async () => {
    const [a, t] = [await args(), await target()];
    const io = captureIo();
    const stopLag = lagMeter();
    const cpu0 = processCpu();
    const t0 = performance.now();
    const status = await runImg(["convert", ...a, t], io).finally(() => stopLag());
    const seconds = (performance.now() - t0) / 1000;
    const cpu1 = processCpu();
    const lag = stopLag();
    if (status !== 0) throw new Error(`img convert failed: ${io.stderr}`);
    const cpuMicros = cpu1.user - cpu0.user + cpu1.system - cpu0.system;
    return { requests: 1, seconds, cpuMicros, lag };
  };
}

/**
 * A conversion as a child process, timed around the whole process as a user who types it
 * waits for it (start-up included), its CPU from child rusage: `argv` then `convert`, the
 * case's options and the target. The case's `beforeEach` has removed the target.
 */
function convertProcess(
  argv: () => Promise<readonly string[]>,
  args: () => Promise<string[]>,
  target: () => Promise<string>,
): Runner {
  return async () => {
    const [[cmd, ...pre], a, t] = [await argv(), await args(), await target()];
    const cpu0 = childrenCpuMicros();
    const t0 = performance.now();
    const r = await new Deno.Command(cmd!, {
      args: [...pre, "convert", ...a, t],
      stdout: "null",
      stderr: "piped",
    }).output();
    const seconds = (performance.now() - t0) / 1000;
    const cpuMicros = childrenCpuMicros() - cpu0;
    if (!r.success) throw new Error(`${cmd} convert: ${new TextDecoder().decode(r.stderr)}`);
    return { requests: 1, seconds, cpuMicros };
  };
}

/**
 * The command line of the bundled CLI, built once on first use into `dir` (and removed with
 * it): `[deno, "run", "-A", "--no-config", bundle, "img"]` (its shebang line), with this process's own
 * `deno`.
 */
export function bundledCli(dir: () => Promise<string>): () => Promise<readonly string[]> {
  let built: Promise<readonly string[]> | null = null;
  return () =>
    built ??= (async () => {
      const entry = await buildCli(`${await dir()}/cli`);
      return [Deno.execPath(), "run", "-A", "--no-config", entry, "img"];
    })();
}

const qemuImg = () => Promise.resolve(["qemu-img"]);

/** The names of the {@link convertCases}, known before any image is made. */
export const CONVERT_CASE_NAMES = [
  "convert 1G half-allocated qcow2 -> raw",
  "convert 1G half-allocated raw -> qcow2",
  "convert 1G half-allocated qcow2 -> raw (in-process)",
  "convert 1G half-allocated raw -> qcow2 (in-process)",
] as const;

/**
 * The two conversions issue 4 lists, ours against qemu-img's with the same options, target
 * 1.0x (qemu-img's wall time over ours), both as processes: ours is `ours()` (the command
 * line that runs `blockgraph img`, e.g. the bundled CLI under `deno run`). `images` and
 * `ours` are called when a case first runs (the caller memoizes them), so a run that selects
 * no convert case never makes the images or the bundle. Before
 * every run the previous target is removed and the file system written back (`sync -f`,
 * untimed), so no run pays for the one before: removing the target after the write-back
 * instead left some runs paying for the freed blocks, with single rounds at 0.3x and 3.8x.
 */
export function convertCases(
  images: () => Promise<ConvertImages>,
  ours: () => Promise<readonly string[]>,
): BenchCase[] {
  const list: [number, (i: ConvertImages) => string, string, string][] = [
    [0, (i) => i.qcow2, "raw", "out.raw"],
    [1, (i) => i.raw, "qcow2", "out.qcow2"],
  ];
  return list.flatMap(([n, source, format, out]) => {
    const args = async () => ["-O", format, source(await images())];
    const target = async () => `${(await images()).dir}/${out}`;
    const peer = convertProcess(qemuImg, args, target);
    const beforeEach = async () => {
      const dir = (await images()).dir;
      // Removed before the write-back, so that freeing its blocks is not timed either.
      await removeIfThere(await target());
      const r = await new Deno.Command("sync", { args: ["-f", dir] }).output();
      if (!r.success) throw new Error(`sync -f ${dir}: ${new TextDecoder().decode(r.stderr)}`);
    };
    return [{
      name: CONVERT_CASE_NAMES[n]!,
      ours: convertProcess(ours, args, target),
      peers: [{ name: "qemu-img convert", run: peer, target: { iops: 1.0 } }],
      beforeEach,
    }, {
      // For embedders (a VM manager calling the library): no target, the command is the target.
      name: CONVERT_CASE_NAMES[n + 2]!,
      ours: oursConvert(args, target),
      peers: [{ name: "qemu-img convert", run: peer }],
      beforeEach,
    }];
  });
}

/** `images` made once, on first use; `remove` deletes them if they were made. */
export function lazyConvertImages(
  size: number,
  parent?: string,
): { images: () => Promise<ConvertImages>; remove: () => Promise<void> } {
  let made: Promise<ConvertImages> | null = null;
  return {
    images: () => made ??= makeConvertImages(size, parent),
    remove: async () => {
      if (made) await (await made).remove();
    },
  };
}

if (import.meta.main) {
  const { formatTable, runCase } = await import("./harness.ts");
  const rounds = Number(Deno.env.get("BENCH_ROUNDS") ?? "7");
  const images = lazyConvertImages(1 << 30, Deno.env.get("BENCH_DIR"));
  try {
    const rows = [];
    const ours = bundledCli(async () => (await images.images()).dir);
    for (const c of convertCases(images.images, ours)) {
      rows.push(...await runCase(c, rounds, (t) => console.error(t)));
    }
    console.log(formatTable(rows));
  } finally {
    await images.remove();
  }
}
