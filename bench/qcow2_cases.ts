/**
 * The qcow2 cases of issue 4, against `qemu-img bench` on the same image in the same run:
 *
 * - 4 KiB random reads at depth 32 with O_DIRECT on a fully allocated 1 GiB qcow2 (the shared
 *   raw test file converted by qemu-img, so every cluster holds data on the device);
 * - 4 KiB allocating writes at depth 32 with O_DIRECT on an empty 1 GiB qcow2 (64 KiB
 *   clusters), made anew before every run: the stride, 64 KiB × 10007, visits every cluster
 *   once in a scrambled order, so every one of the 16384 writes allocates a cluster (an L2
 *   entry, a refcount, the cluster's untouched rest, and now and then an L2 table).
 *
 * @module
 */

import { RANDOM_STRIDE, scaled } from "./cases.ts";
import type { BenchCase } from "./harness.ts";
import { type BenchArgs, oursRunner, qemuImgRunner } from "./runners.ts";
import { dropFromCache } from "./test_file.ts";

/** Requests per run at scale 1. */
export const QCOW2_COUNTS = { readQd32: 100_000, allocQd32: 16_384 } as const;

/** The stride of the allocating case: an odd number of 64 KiB clusters. */
const ALLOC_STRIDE = 65536 * 10007;

async function qemuImg(args: string[]): Promise<void> {
  const r = await new Deno.Command("qemu-img", { args, stdout: "null", stderr: "piped" }).output();
  if (!r.success) {
    throw new Error(`qemu-img ${args.join(" ")}: ${new TextDecoder().decode(r.stderr)}`);
  }
}

/** The qcow2 images of the cases: made on first use next to the raw test file. */
export interface Qcow2Images {
  /** The fully allocated image (made once, from the raw test file). */
  allocated(): Promise<string>;
  /** An empty image, made anew on every call. */
  empty(): Promise<string>;
}

/** The images of the qcow2 cases, beside the raw test file `rawPath` of `size` bytes. */
export function qcow2Images(rawPath: string, size: number): Qcow2Images {
  const dir = rawPath.slice(0, rawPath.lastIndexOf("/"));
  const full = `${dir}/full.qcow2`;
  const empty = `${dir}/empty.qcow2`;
  let made = false;
  return {
    async allocated() {
      if (!made) {
        await qemuImg(["convert", "-f", "raw", "-O", "qcow2", rawPath, full]);
        // Written back and out of the cache before any timed read. Left dirty, every O_DIRECT
        // read of a range still in the cache first waits for its writeback (io_uring hands
        // it to io-wq to do so): whichever side ran first paid for qemu-img's convert.
        await dropFromCache(full);
        made = true;
      }
      return full;
    },
    async empty() {
      await qemuImg(["create", "-f", "qcow2", empty, String(size)]);
      return empty;
    },
  };
}

/** The two qcow2 cases on `images`; both sides get the same `bench` arguments. */
export function qcow2Cases(images: Qcow2Images, scale: number): BenchCase[] {
  const common = (n: number, depth: number) => [
    "-f",
    "qcow2",
    "-t",
    "none",
    "-i",
    "io_uring",
    "-c",
    String(n),
    "-d",
    String(depth),
    "-s",
    "4096",
  ];
  let fullPath = "";
  let emptyPath = "";
  const readArgs: BenchArgs = (n) => [...common(n, 32), "-S", String(RANDOM_STRIDE), fullPath];
  const allocArgs: BenchArgs = (n) => [
    ...common(n, 32),
    "-w",
    "-S",
    String(ALLOC_STRIDE),
    emptyPath,
  ];
  const readCount = scaled(QCOW2_COUNTS.readQd32, scale);
  // More writes than clusters would rewrite allocated ones: the count stays at most 16384.
  const allocCount = Math.min(QCOW2_COUNTS.allocQd32, scaled(QCOW2_COUNTS.allocQd32, scale));
  return [
    {
      name: "qcow2 O_DIRECT 4k randread QD32",
      ours: oursRunner(readArgs, readCount),
      peers: [
        { name: "qemu-img bench", run: qemuImgRunner(readArgs, readCount), target: { iops: 1.0 } },
      ],
      before: async () => {
        fullPath = await images.allocated();
      },
    },
    {
      name: "qcow2 O_DIRECT 4k allocating write QD32",
      ours: oursRunner(allocArgs, allocCount),
      peers: [
        {
          name: "qemu-img bench",
          run: qemuImgRunner(allocArgs, allocCount),
          target: { iops: 1.0 },
        },
      ],
      beforeEach: async () => {
        emptyPath = await images.empty();
      },
    },
  ];
}
