/**
 * `deno task bench`: ours and the peers side by side in one run, alternating, several rounds
 * (`BENCH_ROUNDS`, default 5), medians, the ratios ours/peer, and the targets of issue 3
 * checked, for every case the issue lists (see `cases.ts`). Ours runs in this process through
 * `blockgraph img bench` (so its CPU time is this process's, over the timed loop only); the
 * peers run as child processes (see `runners.ts` for how each one's CPU is measured).
 *
 * Environment: `BENCH_ROUNDS` (rounds, default 5), `BENCH_SCALE` (multiplies every request
 * count, default 1), `BENCH_DIR` (where the 1 GiB test file goes, default the system's temp
 * directory; it must be on a real disk, not tmpfs, for the O_DIRECT cases),
 * `BENCH_CASES` (a substring: run only the cases whose name contains it).
 *
 * @module
 */

import { Graph } from "@blockgraph/core";
import { defaultRegistry, FileInstance } from "@blockgraph/drivers";
import { ensurePeers } from "../tests/peers.ts";
import { fileCases, nbdCases, nullCoCases } from "./cases.ts";
import { type BenchCase, formatTable, type Row, runCase } from "./harness.ts";
import { createTestFile } from "./test_file.ts";

const ROUNDS = Number(Deno.env.get("BENCH_ROUNDS") ?? 5);
const SCALE = Number(Deno.env.get("BENCH_SCALE") ?? 1);
const FILTER = Deno.env.get("BENCH_CASES") ?? "";
const FILE_SIZE = 1 << 30;

/** Which engine a file node asked for `aio` with `direct` actually gets here. */
async function engineInUse(path: string, aio: string, direct: boolean): Promise<string> {
  const graph = new Graph({ registry: defaultRegistry() });
  try {
    const node = await graph.open(
      { driver: "file", filename: path, aio, "read-only": true, cache: { direct } },
      "probe",
    );
    const inst = node.instance;
    const name = inst instanceof FileInstance ? inst.aio : "unknown";
    await node.unref("probe");
    return name;
  } finally {
    await graph.closeAll();
  }
}

if (!Number.isInteger(ROUNDS) || ROUNDS < 1) throw new RangeError(`BENCH_ROUNDS ${ROUNDS}`);
await ensurePeers(["qemu-img", "fio", "qemu-nbd", "nbdkit", "nbdcopy"]);
const log = (text: string) => console.error(text);
log("creating a 1 GiB test file, every byte written ...");
const file = await createTestFile(FILE_SIZE, Deno.env.get("BENCH_DIR"));
const rows: Row[] = [];
try {
  const cases: BenchCase[] = [
    ...nullCoCases(SCALE),
    ...fileCases(file.path, file.size, SCALE),
    ...nbdCases(file.path, file.size, SCALE),
  ].filter((c) => c.name.includes(FILTER));
  const direct = await engineInUse(file.path, "io_uring", true);
  const buffered = await engineInUse(file.path, "io_uring", false);
  console.log(
    `rounds: ${ROUNDS} (medians), scale ${SCALE}; ours asks aio=io_uring and gets ` +
      `${direct} (O_DIRECT) / ${buffered} (buffered); test file ${file.path}`,
  );
  for (const c of cases) rows.push(...await runCase(c, ROUNDS, log));
} finally {
  await file.remove();
}
console.log(
  "\nIOPS = requests / run time; ratio = ours/peer (higher is better); CPU µs/req: ours is " +
    "this process's CPU over the timed loop, qemu-img's its child rusage less a -c 0 run, " +
    "fio's its job usr+sys.\n",
);
console.log(formatTable(rows));
const missed = rows.filter((r) => r.misses.length > 0);
console.log(
  missed.length === 0
    ? "every target met"
    : `${missed.length} target(s) missed: ${missed.map((r) => r.name).join(", ")}`,
);
