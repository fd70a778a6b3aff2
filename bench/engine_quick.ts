/**
 * Quick engine measurement: 4 KiB random reads with O_DIRECT on a 1 GiB raw file, through a
 * Backend and the `file` protocol, at depth 1 and 32, beside `fio --ioengine=io_uring` in the
 * same run (alternating, medians of the rounds). Prints IOPS and CPU time per request.
 *
 * Usage: `deno run -A bench/engine_quick.ts [--aio=io_uring|native|threads] [--rounds=3]
 * [--seconds=3] [--depths=1,32] [--file=/var/tmp/blockgraph-bench-1g.img]`
 *
 * @module
 */

import process from "node:process";
import { Graph, IoVector, Perm } from "@blockgraph/core";
import { defaultRegistry } from "@blockgraph/drivers";
import { BufferPool } from "../packages/drivers/io/buffer_pool.ts";

const SIZE = 1 << 30;
const BS = 4096;

function arg(name: string, fallback: string): string {
  const a = Deno.args.find((x) => x.startsWith(`--${name}=`));
  return a ? a.slice(name.length + 3) : fallback;
}

/** Creates the test file with real data (not fallocate: unwritten extents skip the disk). */
async function ensureFile(path: string): Promise<void> {
  try {
    if ((await Deno.stat(path)).size === SIZE) return;
  } catch { /* created below */ }
  const f = await Deno.open(path, { write: true, create: true, truncate: true });
  const chunk = new Uint8Array(8 << 20);
  for (let i = 0; i < chunk.length; i++) chunk[i] = (i * 131 + 7) & 0xff;
  for (let off = 0; off < SIZE; off += chunk.length) {
    chunk[0] = off >>> 20;
    let done = 0;
    while (done < chunk.length) done += await f.write(chunk.subarray(done));
  }
  f.syncSync();
  f.close();
}

interface Result {
  iops: number;
  cpuUs: number;
}

async function ours(path: string, aio: string, depth: number, seconds: number): Promise<Result> {
  const graph = new Graph({ registry: defaultRegistry() });
  const node = await graph.open(
    { driver: "file", filename: path, aio, cache: { direct: true }, "read-only": true },
    "bench",
  );
  const blk = graph.createBackend({ perm: Perm.CONSISTENT_READ, shared: Perm.ALL });
  await blk.insertRoot(node);
  await node.unref("bench");
  const pool = new BufferPool();
  const blocks = SIZE / BS;
  let ops = 0;
  let stop = false;
  let seed = 0x9e3779b9 ^ depth;
  const worker = async () => {
    const qiov = IoVector.of(pool.get(BS).bytes.subarray(0, BS));
    while (!stop) {
      seed ^= seed << 13;
      seed ^= seed >>> 17;
      seed ^= seed << 5;
      await blk.preadv(((seed >>> 0) % blocks) * BS, BS, qiov, 0);
      ops++;
    }
  };
  // Warm up, then measure.
  const warm = setTimeout(() => stop = true, 300);
  await Promise.all(Array.from({ length: depth }, worker));
  clearTimeout(warm);
  stop = false;
  ops = 0;
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  const timer = setTimeout(() => stop = true, seconds * 1000);
  await Promise.all(Array.from({ length: depth }, worker));
  const elapsed = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  clearTimeout(timer);
  await blk.removeRoot();
  await graph.closeAll();
  pool.destroy();
  return { iops: ops / elapsed, cpuUs: (cpu.user + cpu.system) / ops };
}

async function fio(path: string, depth: number, seconds: number): Promise<Result> {
  const out = await new Deno.Command("fio", {
    args: [
      "--name=r",
      `--filename=${path}`,
      "--ioengine=io_uring",
      "--direct=1",
      "--rw=randread",
      `--bs=${BS}`,
      `--iodepth=${depth}`,
      `--runtime=${seconds}`,
      "--ramp_time=0.3",
      "--time_based",
      "--output-format=json",
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!out.success) throw new Error(`fio failed: ${new TextDecoder().decode(out.stderr)}`);
  const text = new TextDecoder().decode(out.stdout);
  const job = JSON.parse(text.slice(text.indexOf("{"))).jobs[0];
  const ios = job.read.total_ios as number;
  const runtimeS = job.read.runtime / 1000;
  const cpuUs = ((job.usr_cpu + job.sys_cpu) / 100) * runtimeS * 1e6 / ios;
  return { iops: job.read.iops as number, cpuUs };
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

const path = arg("file", "/var/tmp/blockgraph-bench-1g.img");
const aio = arg("aio", "io_uring");
const rounds = Number(arg("rounds", "3"));
const seconds = Number(arg("seconds", "3"));
const depths = arg("depths", "1,32").split(",").map(Number);
await ensureFile(path);
console.log(`4 KiB random read, O_DIRECT, 1 GiB file, ${rounds} rounds of ${seconds}s, aio=${aio}`);
for (const depth of depths) {
  const a: Result[] = [];
  const b: Result[] = [];
  for (let r = 0; r < rounds; r++) {
    a.push(await ours(path, aio, depth, seconds));
    b.push(await fio(path, depth, seconds));
  }
  const oi = median(a.map((x) => x.iops));
  const fi = median(b.map((x) => x.iops));
  const oc = median(a.map((x) => x.cpuUs));
  const fc = median(b.map((x) => x.cpuUs));
  console.log(
    `depth ${String(depth).padStart(2)}: ours ${(oi / 1000).toFixed(1)}k IOPS ` +
      `(${oc.toFixed(1)} us CPU/req), fio ${(fi / 1000).toFixed(1)}k IOPS ` +
      `(${fc.toFixed(1)} us CPU/req), ratio ${(oi / fi).toFixed(3)}, CPU ratio ` +
      `${(oc / fc).toFixed(2)}`,
  );
}
