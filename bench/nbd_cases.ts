/**
 * The NBD cases of issue 5: `qemu-img bench` over NBD (4 KiB random read and write at depth
 * 32, 1 MiB sequential read at depth 8) and `nbdcopy` of the whole 1 GiB export to `null:`,
 * against our daemon and the best peer on the same transport serving the same raw
 * file: `qemu-nbd` over a unix socket, `nbdkit`'s file plugin over TCP loopback (qemu-nbd
 * 7.2 stalls on TCP, see the NBD server's TCP_NODELAY comment). Our daemon serves the file
 * through the file driver (`aio=io_uring`, page cache), qemu-nbd through io_uring too.
 *
 * Like for like: all three use the page cache (writeback: no FUA, and qemu-img bench sends no
 * flush inside the timed run), the same raw file, and structured replies. They differ in what
 * each does natively: nbdkit's file plugin writes with pwrite on its own worker threads;
 * qemu-nbd and ours submit to io_uring, which hands ext4 page-cache writes to io-wq worker
 * threads (ext4 refuses RWF_NOWAIT). nbdcopy opens four connections to ours and to nbdkit,
 * which advertise multi-conn, but one to qemu-nbd (QEMU advertises it on writable exports
 * only when asked: `nbdinfo` says `can_multi_conn: false`).
 *
 * Write runs start with the file written back and dropped from the page cache, read runs
 * (and nbdcopy) with it cached (`test_file.ts` says why). Each run starts its server, runs
 * the client, and stops the server, so cases need no teardown; the time is the client's
 * (qemu-img's "Run completed in", nbdcopy's wall time) and the CPU is the server's
 * (`/proc/PID/stat` user+system over the client's run only).
 *
 * The `qemu-img bench` cases measure the servers' steady state, as fio's `ramp_time` does:
 * before the timed run, each server (ours and the peer alike) serves an untimed run of the
 * same workload of {@link warmupRequests} requests (`BENCH_NBD_WARMUP`, default 10000; 0
 * times a fresh server, as before session 14), and a write case then drops the file from the
 * page cache again. Why: our daemon's JavaScript is compiled while it serves its first
 * requests (about 150 optimizing compilations in the first 30k 4 KiB writes, 80 ms of V8's
 * worker threads on a 2-core machine where the client needs a core too), which a daemon pays
 * once and a 30k-request run would otherwise pay every time. The warm-up moves little
 * (session 14, NBD TCP 4 KiB writes against nbdkit: 0.74x fresh, 0.72x after 10k, 0.83x
 * after 40k: V8 is still optimizing after 10k; session 18: 0.84x after 40k, the same as after
 * 10k); nbdcopy (below) still measures a fresh server, as a one-shot export sees it.
 *
 * Where the TCP write case's gap lies (session 18: `qemu-img bench -w -c 100000 -d 32 -s 4096`
 * over TCP after 20k untimed writes, the file kept in the cache, 3 alternating rounds):
 * - ours on the file: 1.82-2.06 s;
 * - ours on `null-co`, which writes nothing: 1.50-1.81 s;
 * - nbdkit's file plugin: 1.86-1.97 s;
 * - nbdkit's null plugin: 1.52-1.75 s.
 *
 * So when the pages are already cached, the two servers are level, and even a write that cost
 * nothing would gain us only 10-20%. `qemu-img bench` itself needs one of the machine's two
 * cores. The gap in this case comes from its cold cache. There, each 4 KiB write copies into a
 * page the kernel has to allocate:
 * - nbdkit does that on its worker threads, beside the socket work;
 * - we do it on the JS thread, which also does our socket work.
 *
 * Handing the write to io-wq costs more than it moves (see `SYNC_WRITES` in `uring_tuning.ts`).
 *
 * @module
 */

import type { BenchCase } from "./harness.ts";
import { RANDOM_STRIDE } from "./cases.ts";
import type { Measurement, Runner } from "./runners.ts";
import { dropFromCache, warmPageCache } from "./test_file.ts";

/** Which server a run starts. */
type ServerKind = "ours" | "qemu-nbd" | "nbdkit";
/** Where it listens. */
type Transport = "unix" | "tcp";

const PORT = 10_870;
const TICK_MICROS = 1e6 / 100;
const EXPORT = "disk";

interface Where {
  transport: Transport;
  sock: string;
}

function serverArgs(kind: ServerKind, file: string, w: Where): [string, string[]] {
  const unix = w.transport === "unix";
  if (kind === "ours") {
    const addr = unix
      ? `addr.type=unix,addr.path=${w.sock}`
      : `addr.type=inet,addr.host=127.0.0.1,addr.port=${PORT}`;
    const main = new URL("../packages/cli/main.ts", import.meta.url).pathname;
    return [Deno.execPath(), [
      "run",
      "-A",
      main,
      "daemon",
      "--blockdev",
      `driver=file,node-name=f0,filename=${file},aio=io_uring`,
      "--nbd-server",
      addr,
      "--export",
      `type=nbd,id=e0,node-name=f0,name=${EXPORT},writable=on`,
    ]];
  }
  if (kind === "qemu-nbd") {
    const at = unix ? ["-k", w.sock] : ["-b", "127.0.0.1", "-p", String(PORT)];
    return ["qemu-nbd", ["-f", "raw", "--aio=io_uring", "-t", "-x", EXPORT, ...at, file]];
  }
  const at = unix ? ["-U", w.sock] : ["-i", "127.0.0.1", "-p", String(PORT)];
  return ["nbdkit", ["-f", ...at, "file", file]];
}

async function up(w: Where): Promise<boolean> {
  try {
    const c = w.transport === "unix"
      ? await Deno.connect({ transport: "unix", path: w.sock })
      : await Deno.connect({ hostname: "127.0.0.1", port: PORT });
    c.close();
    return true;
  } catch {
    return false;
  }
}

/** user+system CPU of `pid` so far, in microseconds. */
function cpuOf(pid: number): number {
  const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(f[11]) + Number(f[12])) * TICK_MICROS;
}

/** The untimed requests a `qemu-img bench` case sends each server before its run (see above). */
export function warmupRequests(scale: number): number {
  const n = Number(Deno.env.get("BENCH_NBD_WARMUP") ?? 10_000);
  return Number.isFinite(n) && n > 0 ? Math.max(1, Math.round(n * scale)) : 0;
}

/**
 * Runs `client` against a fresh `kind` server, after `warmup` (untimed) when given; the
 * server's CPU over the client's run.
 */
async function withServer(
  kind: ServerKind,
  file: string,
  transport: Transport,
  client: (uri: string, opts: string) => Promise<{ requests: number; seconds: number }>,
  warmup?: (uri: string, opts: string) => Promise<unknown>,
): Promise<Measurement> {
  const dir = await Deno.makeTempDir({ prefix: "bench-nbd-" });
  const w: Where = { transport, sock: `${dir}/nbd.sock` };
  const [cmd, args] = serverArgs(kind, file, w);
  const child = new Deno.Command(cmd, { args, stdin: "null", stdout: "null", stderr: "piped" })
    .spawn();
  const stderr = new Response(child.stderr).text();
  let exited = false;
  const status = child.status.then(() => (exited = true));
  const timer = setTimeout(() => !exited && child.kill("SIGKILL"), 600_000);
  try {
    const deadline = Date.now() + 30_000;
    while (!(await up(w))) {
      if (exited || Date.now() > deadline) throw new Error(`${cmd} did not start: ${await stderr}`);
      await new Promise((r) => setTimeout(r, 20));
    }
    const uri = transport === "unix"
      ? `nbd+unix:///${EXPORT}?socket=${w.sock}`
      : `nbd://127.0.0.1:${PORT}/${EXPORT}`;
    const opts = transport === "unix"
      ? `driver=nbd,server.type=unix,server.path=${w.sock},export=${EXPORT}`
      : `driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=${PORT},export=${EXPORT}`;
    if (warmup) await warmup(uri, opts);
    const cpu0 = cpuOf(child.pid);
    const r = await client(uri, opts);
    return { ...r, cpuMicros: cpuOf(child.pid) - cpu0 };
  } finally {
    clearTimeout(timer);
    if (!exited) child.kill("SIGTERM");
    await status;
    await stderr;
    await Deno.remove(dir, { recursive: true });
  }
}

async function output(cmd: string, args: string[]): Promise<string> {
  const out = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
  const d = new TextDecoder();
  if (!out.success) throw new Error(`${cmd} ${args.join(" ")} failed: ${d.decode(out.stderr)}`);
  return d.decode(out.stdout);
}

interface Workload {
  name: string;
  count: number;
  depth: number;
  bs: number;
  write: boolean;
  random: boolean;
}

function qemuImgBench(
  kind: ServerKind,
  file: string,
  t: Transport,
  wl: Workload,
  warm: number,
): Runner {
  const args = (count: number, opts: string) => [
    "bench",
    "--image-opts",
    "-c",
    String(count),
    "-d",
    String(wl.depth),
    "-s",
    String(wl.bs),
    ...(wl.random ? ["-S", String(RANDOM_STRIDE)] : []),
    ...(wl.write ? ["-w"] : []),
    opts,
  ];
  const warmup = warm > 0
    ? async (_uri: string, opts: string) => {
      await output("qemu-img", args(warm, opts));
      // The timed run starts from the same page-cache state as without the warm-up.
      if (wl.write) await dropFromCache(file);
    }
    : undefined;
  return () =>
    withServer(kind, file, t, async (_uri, opts) => {
      const text = await output("qemu-img", args(wl.count, opts));
      const m = /Run completed in ([\d.]+) seconds/.exec(text);
      if (!m) throw new Error(`qemu-img bench printed no time: ${text}`);
      return { requests: wl.count, seconds: Number(m[1]) };
    }, warmup);
}

/**
 * nbdcopy of the whole export to `null:` (read and discarded, so the time is the server's and
 * the transport's, not the local disk writing a 1 GiB copy); "requests" are MiB copied.
 */
function nbdcopy(kind: ServerKind, file: string, t: Transport, size: number): Runner {
  return () =>
    withServer(kind, file, t, async (uri) => {
      const t0 = performance.now();
      await output("nbdcopy", [uri, "null:"]);
      return { requests: size / (1 << 20), seconds: (performance.now() - t0) / 1000 };
    });
}

/**
 * The NBD cases on the raw file `path` (`size` bytes): for each transport, the three
 * `qemu-img bench` workloads and nbdcopy, ours against the transport's best peer, target
 * 1.0x IOPS (MiB/s for nbdcopy).
 */
export function nbdCases(path: string, size: number, scale: number): BenchCase[] {
  const n = (base: number) => Math.max(1, Math.round(base * scale));
  const warm = warmupRequests(scale);
  const workloads: Workload[] = [
    {
      name: "4k randread QD32",
      count: n(100_000),
      depth: 32,
      bs: 4096,
      write: false,
      random: true,
    },
    {
      name: "4k randwrite QD32",
      count: n(30_000),
      depth: 32,
      bs: 4096,
      write: true,
      random: true,
    },
    { name: "1M seqread QD8", count: n(1_500), depth: 8, bs: 1 << 20, write: false, random: false },
  ];
  const out: BenchCase[] = [];
  for (const [t, peer] of [["unix", "qemu-nbd"], ["tcp", "nbdkit"]] as const) {
    for (const wl of workloads) {
      out.push({
        name: `NBD ${t} ${wl.name}`,
        ours: qemuImgBench("ours", path, t, wl, warm),
        peers: [{ name: peer, run: qemuImgBench(peer, path, t, wl, warm), target: { iops: 1.0 } }],
        // Writes start from an empty cache (the previous run's dirty pages written back,
        // untimed), so no run pays for another's; reads from a warm one.
        ...(wl.write
          ? { beforeEach: () => dropFromCache(path) }
          : { before: () => warmPageCache(path) }),
      });
    }
    out.push({
      name: `nbdcopy ${t} 1 GiB (MiB/s)`,
      ours: nbdcopy("ours", path, t, size),
      peers: [{ name: peer, run: nbdcopy(peer, path, t, size), target: { iops: 1.0 } }],
      before: () => warmPageCache(path),
    });
  }
  return out;
}
