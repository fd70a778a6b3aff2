import { deepStrictEqual as assertEquals, match as assertMatch } from "node:assert";
import { nullCoCases, RANDOM_STRIDE } from "./cases.ts";
import { formatTable, missesOf, runCase, TABLE_HEADINGS } from "./harness.ts";
import { fioArgs, median } from "./runners.ts";

Deno.test("bench harness runs a 100-request null-co case against qemu-img and tabulates it", async () => {
  const [c] = nullCoCases(100 / 200_000, [1]);
  const rows = await runCase(c!, 1);
  assertEquals(rows.length, 1);
  const row = rows[0]!;
  assertEquals([row.name, row.peer], ["null-co 4k read QD1", "qemu-img bench"]);
  assertEquals(row.oursIops > 0 && row.peerIops > 0 && row.oursCpu >= 0, true);
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
