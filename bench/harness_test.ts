import { deepStrictEqual as assertEquals, match as assertMatch } from "node:assert";
import { nullCoCases, RANDOM_STRIDE } from "./cases.ts";
import { CONVERT_CASE_NAMES } from "./convert.ts";
import { formatTable, LAG_P99_LIMIT_MS, missesOf, runCase, TABLE_HEADINGS } from "./harness.ts";
import { fioArgs, type Measurement, median } from "./runners.ts";

Deno.test("bench harness runs a 100-request null-co case against qemu-img and tabulates it", async () => {
  const [c] = nullCoCases(100 / 200_000, [1]);
  const rows = await runCase(c!, 1);
  assertEquals(rows.length, 1);
  const row = rows[0]!;
  assertEquals([row.name, row.peer], ["null-co 4k read QD1", "qemu-img bench"]);
  assertEquals(row.oursIops > 0 && row.peerIops > 0 && row.oursCpu >= 0, true);
  assertEquals(row.roundRatios.length, 1);
  assertEquals(row.oursLag !== undefined && row.oursLag.maxMs >= row.oursLag.p99Ms, true);
  const lines = formatTable(rows).trimEnd().split("\n");
  assertEquals(lines.length, 3);
  assertEquals(lines[0]!.split("|").map((s) => s.trim()).slice(1, -1), [...TABLE_HEADINGS]);
  assertMatch(
    lines[2]!,
    /^\| null-co 4k read QD1 \| qemu-img bench \| [\d,]+ +\| [\d,]+ +\| \d+\.\d\dx/,
  );
});

Deno.test("bench targets report each miss with its ratio", () => {
  assertEquals(missesOf(90, 100, 1, 1, { iops: 0.95, cpu: 1.25 }), ["IOPS 0.90x < 0.95x"]);
  assertEquals(missesOf(100, 100, 2, 1, { cpu: 1.25 }), ["CPU 2.00x > 1.25x"]);
  assertEquals(missesOf(100, 100, 1, 1, { iops: 1, cpu: 1.25 }), []);
  assertEquals(missesOf(1, 100, 9, 1, undefined), []);
  assertEquals(missesOf(1, 100, 9, 1, undefined, LAG_P99_LIMIT_MS), []);
  assertEquals(missesOf(100, 100, 1, 1, { iops: 1 }, 25), ["lag p99 25.0 ms > 20 ms"]);
});

Deno.test("bench rows carry each round's ratio, our lag, the peer's own CPU report", async () => {
  const runs = (xs: Measurement[]) => {
    let i = 0;
    return () => Promise.resolve(xs[i++ % xs.length]!);
  };
  const m = (iops: number, extra: Partial<Measurement> = {}): Measurement => ({
    requests: iops,
    seconds: 1,
    cpuMicros: iops,
    ...extra,
  });
  let prepared = 0;
  const [row] = await runCase({
    name: "fake",
    // The first of ours is the warm-up.
    ours: runs([
      m(1),
      m(100, { lag: { p99Ms: 1, maxMs: 2 } }),
      m(90, { lag: { p99Ms: 30, maxMs: 40 } }),
      m(110, { lag: { p99Ms: 25, maxMs: 26 } }),
    ]),
    peers: [{
      name: "peer",
      run: runs([m(100, { reportedCpuMicros: 50 }), m(100, { reportedCpuMicros: 60 })]),
      target: { iops: 1 },
    }],
    beforeEach: () => Promise.resolve(void prepared++),
  }, 3);
  assertEquals(row!.roundRatios.map((x) => x.toFixed(2)), ["1.00", "0.90", "1.10"]);
  assertEquals([row!.oursIops, row!.peerIops, row!.oursCpu, row!.peerCpu], [100, 100, 1, 1]);
  assertEquals(row!.oursLag, { p99Ms: 25, maxMs: 40 });
  assertEquals(row!.peerReportedCpu, 0.5);
  assertEquals(row!.misses, ["lag p99 25.0 ms > 20 ms"]);
  assertEquals(prepared, 7);
  const line = formatTable([row!]).trimEnd().split("\n")[2]!;
  assertMatch(line, /\| 1\.00x \| 1\.00 0\.90 1\.10 +\|.*\| 25\.0\/40\.0 +\|.*MISS: lag p99/);
});

Deno.test("bench lists the convert cases by name before making their images", () => {
  assertEquals(CONVERT_CASE_NAMES.every((n) => n.startsWith("convert 1G half-allocated")), true);
});

Deno.test("bench median and fio arguments", () => {
  assertEquals([median([3, 1, 2]), median([4, 1, 3, 2])], [2, 2.5]);
  assertEquals((RANDOM_STRIDE / 4096) % 2, 1);
  const a = fioArgs({
    filename: "/f",
    size: 1 << 30,
    rw: "randread",
    bs: 4096,
    depth: 32,
    direct: true,
    engine: "io_uring",
  }, 1000);
  assertEquals(a.includes("--io_size=4096000") && a.includes("--direct=1"), true);
  assertEquals(a.includes("--invalidate=0"), true);
});
