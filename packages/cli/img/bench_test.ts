import { deepStrictEqual as assertEquals, match as assertMatch } from "node:assert";
import {
  type BlockDriver,
  type DriverInstance,
  DriverRegistry,
  Graph,
  type IoVector,
  type OpenContext,
  type OptionValues,
  Perm,
} from "@blockgraph/core";
import { captureIo } from "../common/cli_io.ts";
import { imgBench, lagMeter, parseBenchArgs } from "./bench.ts";
import { type BenchParams, runBench } from "./bench_loop.ts";
import { runImg } from "./run_img.ts";

async function img(args: string[]) {
  const cap = captureIo();
  const status = await runImg(args, cap);
  return { status, out: cap.stdout, err: cap.stderr };
}

/** A protocol that records every request and flush, completing each after a timer tick. */
function traceDriver(events: string[], inFlight: { now: number; max: number }): BlockDriver {
  const tick = () => new Promise<void>((resolve) => setTimeout(resolve, 0));
  class TraceInstance implements DriverInstance {
    constructor(readonly size: number) {}
    getLength(): number {
      return this.size;
    }
    async #request(kind: string, offset: number): Promise<void> {
      events.push(`${kind}${offset}`);
      inFlight.max = Math.max(inFlight.max, ++inFlight.now);
      await tick();
      inFlight.now--;
    }
    preadv(offset: number, _bytes: number, _qiov: IoVector, _qo: number): Promise<void> {
      return this.#request("r", offset);
    }
    pwritev(offset: number, _bytes: number, _qiov: IoVector, _qo: number): Promise<void> {
      return this.#request("w", offset);
    }
    async flush(): Promise<void> {
      events.push(`F${inFlight.now}`);
      await tick();
    }
    close(): Promise<void> {
      return Promise.resolve();
    }
  }
  return {
    name: "trace",
    kind: "protocol",
    protocolPrefix: "trace",
    options: { size: { type: "size", description: "size", default: 1 << 20 } },
    open(_ctx: OpenContext, options: OptionValues): Promise<DriverInstance> {
      return Promise.resolve(new TraceInstance(options.size as number));
    },
  };
}

async function traced(params: Partial<BenchParams>, size = 16384) {
  const events: string[] = [];
  const inFlight = { now: 0, max: 0 };
  const graph = new Graph({ registry: new DriverRegistry([traceDriver(events, inFlight)]) });
  try {
    const node = await graph.open({ driver: "trace", size }, "t");
    const blk = graph.createBackend({ perm: Perm.CONSISTENT_READ | Perm.WRITE, shared: Perm.ALL });
    await blk.insertRoot(node);
    await node.unref("t");
    const result = await runBench(blk, {
      count: 6,
      depth: 2,
      size: 4096,
      step: 4096,
      offset: 0,
      write: true,
      pattern: 0,
      flushInterval: 0,
      drainOnFlush: true,
      ...params,
    });
    await blk.unref();
    return { events, maxInFlight: inFlight.max, result };
  } finally {
    await graph.closeAll();
  }
}

Deno.test("runBench steps offsets modulo the image size, depth requests at a time", async () => {
  const r = await traced({ count: 6, depth: 3, step: 12288, write: false });
  assertEquals(r.events, ["r0", "r12288", "r8192", "r4096", "r0", "r12288"]);
  assertEquals(r.maxInFlight, 3);
  assertEquals(r.result.seconds >= 0 && r.result.cpuUserMicros >= 0, true);
});

Deno.test("runBench drains the queue before each flush, and flushes after the last request", async () => {
  const r = await traced({ count: 6, depth: 2, flushInterval: 2 });
  assertEquals(r.events, ["w0", "w4096", "F0", "w8192", "w12288", "F0", "w0", "w4096", "F0"]);
});

Deno.test("runBench with --no-drain flushes with requests still in flight", async () => {
  const r = await traced({ count: 6, depth: 2, flushInterval: 2, drainOnFlush: false });
  // As qemu-img: a flush whenever the unsubmitted count is a multiple of the interval when a
  // request completes, so with the queue not drained the count reaches 0 twice at the end.
  assertEquals(r.events.filter((e) => e.startsWith("F")).length, 4);
  assertEquals(r.events.some((e) => e === "F1"), true);
  assertEquals(r.events.filter((e) => e.startsWith("w")).length, 6);
});

Deno.test("img bench refuses bad arguments with qemu-img's messages", async () => {
  const cases: [string[], string][] = [
    [["-c", "x", "f"], "qemu-img: Invalid request count specified\n"],
    [["-c", "-1", "f"], "qemu-img: Invalid request count specified\n"],
    [["-c", "1k", "f"], "qemu-img: Invalid request count specified\n"],
    [["-d", "2147483648", "f"], "qemu-img: Invalid queue depth specified\n"],
    [["-d", "0", "f"], "qemu-img: Invalid queue depth specified\n"],
    [
      ["-s", "x", "f"],
      "qemu-img: Invalid buffer size specified. You may use k, M, G, T, P or E suffixes for\n" +
      "qemu-img: kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.\n",
    ],
    [
      ["-s", "3G", "f"],
      "qemu-img: Invalid buffer size specified. Must be between 0 and 2147483647.\n",
    ],
    [
      ["-S", "3G", "f"],
      "qemu-img: Invalid step_size specified. Must be between 0 and 2147483647.\n",
    ],
    [
      ["-o", "9E", "f"],
      "qemu-img: Invalid offset specified. Must be between 0 and 9223372036854775807.\n",
    ],
    [["-t", "bogus", "f"], "qemu-img: Invalid cache mode\n"],
    [["-i", "bogus", "f"], "qemu-img: Invalid aio option: bogus\n"],
    [["--pattern=256", "f"], "qemu-img: Invalid pattern byte specified\n"],
    [["--flush-interval=x", "f"], "qemu-img: Invalid flush interval specified\n"],
    [["--flush-interval=4", "f"], "qemu-img: --flush-interval is only available in write tests\n"],
    [
      ["-w", "-d", "8", "--flush-interval=4", "f"],
      "qemu-img: Flush interval can't be smaller than depth\n",
    ],
    [
      ["--image-opts", "-f", "raw", "f"],
      "qemu-img: --image-opts and --format are mutually exclusive\n",
    ],
    [
      ["a", "b"],
      "qemu-img: Expecting one image file name\nTry 'qemu-img --help' for more information\n",
    ],
    [
      ["-x", "f"],
      "qemu-img: unrecognized option '-x'\nTry 'qemu-img --help' for more information\n",
    ],
    [["--output=xml", "f"], "qemu-img: --output must be used with human or json as argument.\n"],
  ];
  for (const [args, err] of cases) {
    assertEquals(await img(["bench", ...args]), { status: 1, out: "", err });
  }
});

Deno.test("img bench parses counts in C's base-0 syntax and sizes with suffixes", () => {
  const io = captureIo();
  const graph = new Graph({ registry: new DriverRegistry([]) });
  const o = parseBenchArgs(graph, ["-c", "010", "-d", "0x4", "-s", "1.5k", "-o", "1M", "f"], io);
  if (typeof o === "number") throw new Error(io.stderr);
  assertEquals([o.count, o.depth, o.size, o.step, o.offset], [8, 4, 1536, 1536, 1048576]);
  assertEquals(o.cache, { direct: false, noFlush: false, writethrough: false });
  const n = parseBenchArgs(graph, ["-t", "none", "-n", "-c", "0", "-d", "0", "f"], io);
  if (typeof n === "number") throw new Error(io.stderr);
  assertEquals([n.cache.direct, n.aio, n.count, n.depth], [true, "native", 0, 0]);
});

Deno.test("img bench writes its pattern where the steps land and prints qemu-img's lines", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/a.img`;
    await Deno.writeFile(path, new Uint8Array(65536));
    const r = await img([
      "bench",
      "-f",
      "raw",
      "-w",
      "-c",
      "7",
      "-d",
      "2",
      "-S",
      "12k",
      "--pattern=0x41",
      path,
    ]);
    assertEquals(r.status, 0);
    assertEquals(r.err, "");
    assertMatch(
      r.out,
      /^Sending 7 write requests, 4096 bytes each, 2 in parallel \(starting at offset 0, step size 12288\)\nRun completed in \d+\.\d{3} seconds\.\n$/,
    );
    const data = await Deno.readFile(path);
    const written = [0, 12288, 24576, 36864, 49152, 61440, 8192];
    for (let off = 0; off < 65536; off += 4096) {
      const want = written.includes(off) ? 0x41 : 0;
      assertEquals([off, data[off], data[off + 4095]], [off, want, want]);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("img bench reports a failed request as qemu-img and exits 1", async () => {
  const r = await img(["bench", "--image-opts", "-c", "4", "-o", "1M", "driver=null-co,size=1M"]);
  assertEquals(r.status, 1);
  assertEquals(r.err, "qemu-img: Failed request: Input/output error\n");
  assertMatch(r.out, /^Sending 4 read requests/);
});

Deno.test("img bench --output=json adds IOPS, MiB/s, CPU time per request and event-loop lag", async () => {
  const cap = captureIo();
  const graph = new Graph({ registry: (await import("@blockgraph/drivers")).defaultRegistry() });
  try {
    const status = await imgBench(graph, [
      "--image-opts",
      "-c",
      "100",
      "-d",
      "4",
      "--output=json",
      "driver=null-co,size=1M",
    ], cap);
    assertEquals(status, 0);
    const j = JSON.parse(cap.stdout);
    assertEquals(Object.keys(j), [
      "requests",
      "request-size",
      "depth",
      "offset",
      "step",
      "write",
      "flush-interval",
      "seconds",
      "iops",
      "mib-per-second",
      "cpu-user-us",
      "cpu-system-us",
      "cpu-us-per-request",
      "lag-p99-ms",
      "lag-max-ms",
      "lag-samples",
    ]);
    assertEquals([j.requests, j.depth, j.write], [100, 4, false]);
    assertEquals(j.iops > 0 && j["mib-per-second"] > 0 && j["cpu-us-per-request"] >= 0, true);
    assertEquals(Math.abs(j.iops - 100 / j.seconds) < 1e-6 * j.iops, true);
    assertEquals(j["lag-max-ms"] >= j["lag-p99-ms"] && j["lag-p99-ms"] >= 0, true);
  } finally {
    await graph.closeAll();
  }
});

Deno.test("img bench's lag meter sees a blocked event loop, an idle one barely", async () => {
  const idle = lagMeter(5);
  await new Promise((r) => setTimeout(r, 60));
  const quiet = idle();
  assertEquals(quiet.samples >= 3 && quiet.maxMs < 50, true);
  const busy = lagMeter(5);
  await new Promise((r) => setTimeout(r, 12));
  const until = performance.now() + 60;
  while (performance.now() < until) { /* the engine must never do this */ }
  const blocked = busy();
  assertEquals(blocked.maxMs >= 40 && blocked.p99Ms === blocked.maxMs, true);
});
