/**
 * `img convert` against `qemu-img convert` with the same options: a 1 GiB qcow2 with every
 * other MiB written (half allocated) to raw, and the raw image of the same content to qcow2.
 * One "request" is one whole conversion, so the IOPS ratio is qemu-img's wall time over ours
 * (and "CPU µs/req" is CPU per conversion: ours this process's, qemu-img's its child rusage).
 * Part of `deno task bench` (`BENCH_CASES=convert` runs only these); also runs alone:
 * `deno run -A bench/convert.ts` (`BENCH_DIR`, `BENCH_ROUNDS`).
 *
 * @module
 */

import { captureIo, runImg } from "@blockgraph/cli";
import { lagMeter } from "../packages/cli/img/bench.ts";
import { processCpu } from "../packages/cli/img/bench_loop.ts";
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
 * Ours: `img convert` in this process, timed around the whole command, with the process's CPU
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

/** qemu-img convert in a child process, timed around the process, its CPU from rusage. */
function qemuConvert(args: () => Promise<string[]>, target: () => Promise<string>): Runner {
  return async () => {
    const [a, t] = [await args(), await target()];
    const cpu0 = childrenCpuMicros();
    const t0 = performance.now();
    const r = await new Deno.Command("qemu-img", {
      args: ["convert", ...a, t],
      stdout: "null",
      stderr: "piped",
    }).output();
    const seconds = (performance.now() - t0) / 1000;
    const cpuMicros = childrenCpuMicros() - cpu0;
    if (!r.success) throw new Error(new TextDecoder().decode(r.stderr));
    return { requests: 1, seconds, cpuMicros };
  };
}

/** The names of the {@link convertCases}, known before any image is made. */
export const CONVERT_CASE_NAMES = [
  "convert 1G half-allocated qcow2 -> raw",
  "convert 1G half-allocated raw -> qcow2",
] as const;

/**
 * The two conversions issue 4 lists, ours against qemu-img's with the same options, target
 * 1.0x (qemu-img's wall time over ours). `images` is called when a case first runs (the
 * caller memoizes it), so a run that selects no convert case never makes the images. Before
 * every run the previous target is removed and the file system written back (`sync -f`,
 * untimed), so no run pays for the one before: removing the target after the write-back
 * instead left some runs paying for the freed blocks, with single rounds at 0.3x and 3.8x.
 */
export function convertCases(images: () => Promise<ConvertImages>): BenchCase[] {
  const list: [string, (i: ConvertImages) => string, string, string][] = [
    [CONVERT_CASE_NAMES[0], (i) => i.qcow2, "raw", "out.raw"],
    [CONVERT_CASE_NAMES[1], (i) => i.raw, "qcow2", "out.qcow2"],
  ];
  return list.map(([name, source, format, out]) => {
    const args = async () => ["-O", format, source(await images())];
    const target = async () => `${(await images()).dir}/${out}`;
    return {
      name,
      ours: oursConvert(args, target),
      peers: [{ name: "qemu-img convert", run: qemuConvert(args, target), target: { iops: 1.0 } }],
      beforeEach: async () => {
        const dir = (await images()).dir;
        // Removed before the write-back, so that freeing its blocks is not timed either.
        await removeIfThere(await target());
        const r = await new Deno.Command("sync", { args: ["-f", dir] }).output();
        if (!r.success) throw new Error(`sync -f ${dir}: ${new TextDecoder().decode(r.stderr)}`);
      },
    };
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
    for (const c of convertCases(images.images)) {
      rows.push(...await runCase(c, rounds, (t) => console.error(t)));
    }
    console.log(formatTable(rows));
  } finally {
    await images.remove();
  }
}
