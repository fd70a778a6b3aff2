/**
 * The cases issue 3 lists, with their peers and targets. Ours and `qemu-img bench` get the
 * same `bench` arguments; random reads and writes use qemu-img's only random pattern, a large
 * odd stride (4096 × 100003) that wraps modulo the image size and visits every block in a
 * scrambled order, so both visit the same offsets; fio gets its own `randread`/`randwrite`.
 *
 * @module
 */

import type { BenchCase } from "./harness.ts";
import { type BenchArgs, fioRunner, oursRunner, qemuImgRunner } from "./runners.ts";
import { dropFromCache, warmPageCache } from "./test_file.ts";

/** The stride of the random cases: 4096 × 100003, odd in blocks, so coprime with any 2^n. */
export const RANDOM_STRIDE = 4096 * 100003;

/**
 * Request counts at scale 1, sized for runs of roughly a second on the reference machine (the
 * buffered writes run at 20–40k IOPS here, and each of their runs is followed by writing the
 * dirty pages back, so they get fewer).
 */
export const BASE_COUNTS = {
  nullQd1: 200_000,
  nullQd32: 1_000_000,
  directReadQd1: 20_000,
  directReadQd32: 100_000,
  directWriteQd32: 100_000,
  directSeqQd8: 2_000,
  cachedReadQd32: 300_000,
  cachedWriteQd32: 50_000,
} as const;

/** `base` requests at `scale`, at least one. */
export function scaled(base: number, scale: number): number {
  return Math.max(1, Math.round(base * scale));
}

/** The `null-co` cases: pure layer overhead, 4 KiB reads at depth 1 and 32, against qemu-img. */
export function nullCoCases(scale: number, depths: readonly number[] = [1, 32]): BenchCase[] {
  return depths.map((depth) => {
    const count = scaled(depth === 1 ? BASE_COUNTS.nullQd1 : BASE_COUNTS.nullQd32, scale);
    const args: BenchArgs = (n) => [
      "--image-opts",
      "-c",
      String(n),
      "-d",
      String(depth),
      "-s",
      "4096",
      "driver=null-co,size=1G",
    ];
    return {
      name: `null-co 4k read QD${depth}`,
      ours: oursRunner(args, count),
      peers: [{ name: "qemu-img bench", run: qemuImgRunner(args, count), target: { iops: 1.0 } }],
    };
  });
}

interface FileCase {
  name: string;
  count: number;
  depth: number;
  bs: number;
  write: boolean;
  random: boolean;
  direct: boolean;
  iopsTarget?: number;
}

/**
 * The raw-file cases on `path` (`size` bytes): O_DIRECT 4 KiB random read at depth 1 and 32,
 * random write at depth 32, 1 MiB sequential read at depth 8, and 4 KiB random read and
 * random write through the page cache at depth 32; each against fio and qemu-img bench on
 * io_uring. The page-cache cases start from a warm cache; the buffered write case writes the
 * dirty pages back (fdatasync, untimed) before every run, so no run pays for the one before.
 */
export function fileCases(path: string, size: number, scale: number): BenchCase[] {
  const list: FileCase[] = [
    {
      name: "O_DIRECT 4k randread QD1",
      count: BASE_COUNTS.directReadQd1,
      depth: 1,
      bs: 4096,
      write: false,
      random: true,
      direct: true,
      iopsTarget: 0.95,
    },
    {
      name: "O_DIRECT 4k randread QD32",
      count: BASE_COUNTS.directReadQd32,
      depth: 32,
      bs: 4096,
      write: false,
      random: true,
      direct: true,
      iopsTarget: 0.97,
    },
    {
      name: "O_DIRECT 4k randwrite QD32",
      count: BASE_COUNTS.directWriteQd32,
      depth: 32,
      bs: 4096,
      write: true,
      random: true,
      direct: true,
    },
    {
      name: "O_DIRECT 1M seqread QD8",
      count: BASE_COUNTS.directSeqQd8,
      depth: 8,
      bs: 1 << 20,
      write: false,
      random: false,
      direct: true,
    },
    {
      name: "page cache 4k randread QD32",
      count: BASE_COUNTS.cachedReadQd32,
      depth: 32,
      bs: 4096,
      write: false,
      random: true,
      direct: false,
      iopsTarget: 0.9,
    },
    {
      name: "page cache 4k randwrite QD32",
      count: BASE_COUNTS.cachedWriteQd32,
      depth: 32,
      bs: 4096,
      write: true,
      random: true,
      direct: false,
    },
  ];
  return list.map((f) => {
    const count = scaled(f.count, scale);
    const args: BenchArgs = (n) => [
      "-f",
      "raw",
      "-t",
      f.direct ? "none" : "writeback",
      "-i",
      "io_uring",
      "-c",
      String(n),
      "-d",
      String(f.depth),
      "-s",
      String(f.bs),
      ...(f.random ? ["-S", String(RANDOM_STRIDE)] : []),
      ...(f.write ? ["-w"] : []),
      path,
    ];
    const rw = f.random ? (f.write ? "randwrite" : "randread") : (f.write ? "write" : "read");
    const fioJob = {
      filename: path,
      size,
      rw,
      bs: f.bs,
      depth: f.depth,
      direct: f.direct,
    } as const;
    return {
      name: f.name,
      ours: oursRunner(args, count),
      peers: [
        {
          name: "fio io_uring",
          run: fioRunner({ ...fioJob, engine: "io_uring" }, count),
          target: { ...(f.iopsTarget !== undefined ? { iops: f.iopsTarget } : {}), cpu: 1.25 },
        },
        { name: "qemu-img bench", run: qemuImgRunner(args, count) },
      ],
      // Page-cache reads start warm; page-cache writes from an empty cache, written back and
      // dropped before every run (`dropFromCache` says why: left warm, the same case gave
      // fio 65k IOPS in one run and 24k in another).
      ...(f.direct
        ? {}
        : f.write
        ? { beforeEach: () => dropFromCache(path) }
        : { before: () => warmPageCache(path) }),
    };
  });
}

/** The NBD cases of issue 5 (see `nbd_cases.ts`). */
export { nbdCases } from "./nbd_cases.ts";

export { convertCases, makeConvertImages } from "./convert.ts";
