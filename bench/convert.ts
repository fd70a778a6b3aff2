/**
 * `img convert` against `qemu-img convert` with the same options: a 1 GiB qcow2 with every
 * other MiB written (half allocated) to raw, and the raw image of the same content to qcow2.
 * One "request" is one whole conversion, so the IOPS ratio is qemu-img's wall time over ours.
 * Run alone: `deno run -A bench/convert.ts` (`BENCH_DIR`, `BENCH_ROUNDS`).
 *
 * @module
 */

import { captureIo, runImg } from "@blockgraph/cli";
import type { BenchCase } from "./harness.ts";
import type { Runner } from "./runners.ts";

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

/** Ours: `img convert` in this process, timed around the whole command. */
function oursConvert(args: string[], target: string): Runner {
  return async () => {
    await removeIfThere(target);
    const io = captureIo();
    const t0 = performance.now();
    const status = await runImg(["convert", ...args, target], io);
    const seconds = (performance.now() - t0) / 1000;
    if (status !== 0) throw new Error(`img convert failed: ${io.stderr}`);
    return { requests: 1, seconds, cpuMicros: 0 };
  };
}

/** qemu-img convert in a child process, timed around the process. */
function qemuConvert(args: string[], target: string): Runner {
  return async () => {
    await removeIfThere(target);
    const t0 = performance.now();
    const r = await new Deno.Command("qemu-img", {
      args: ["convert", ...args, target],
      stdout: "null",
      stderr: "piped",
    }).output();
    const seconds = (performance.now() - t0) / 1000;
    if (!r.success) throw new Error(new TextDecoder().decode(r.stderr));
    return { requests: 1, seconds, cpuMicros: 0 };
  };
}

/** The two conversions issue 4 lists, ours against qemu-img's with the same options. */
export function convertCases(images: ConvertImages): BenchCase[] {
  const list: [string, string[], string][] = [
    ["convert 1G half-allocated qcow2 -> raw", ["-O", "raw", images.qcow2], "out.raw"],
    ["convert 1G half-allocated raw -> qcow2", ["-O", "qcow2", images.raw], "out.qcow2"],
  ];
  return list.map(([name, args, out]) => {
    const target = `${images.dir}/${out}`;
    return {
      name,
      ours: oursConvert(args, target),
      peers: [{ name: "qemu-img convert", run: qemuConvert(args, target), target: { iops: 1.0 } }],
    };
  });
}

if (import.meta.main) {
  const { formatTable, runCase } = await import("./harness.ts");
  const rounds = Number(Deno.env.get("BENCH_ROUNDS") ?? "5");
  const images = await makeConvertImages(1 << 30, Deno.env.get("BENCH_DIR"));
  try {
    const rows = [];
    for (const c of convertCases(images)) {
      rows.push(...await runCase(c, rounds, (t) => console.error(t)));
    }
    console.log(formatTable(rows));
  } finally {
    await images.remove();
  }
}
