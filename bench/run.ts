/**
 * `deno task bench`: ours and the peers side by side in one run, alternating, several rounds
 * (`BENCH_ROUNDS`, default 7), medians, the ratios ours/peer (and each round's), our
 * event-loop lag, and the targets of issues 3, 4 and 5 checked, for every case they list
 * (see `cases.ts`, `qcow2_cases.ts`, `nbd_cases.ts`, `convert.ts`). Ours runs in this process through
 * `blockgraph img bench` (so its CPU time is this process's, over the timed loop only, and the
 * event-loop lag is measured there too); the peers run as child processes (see `runners.ts` for
 * how each one's CPU is measured). The NBD cases run our daemon as a child process, so they
 * have no lag figure here; the convert cases run both converters as commands, timed whole.
 *
 * Environment: `BENCH_ROUNDS` (rounds, default 7: the machines are noisy, ±30% per round on
 * writes, and seven rounds settle a 0.97x median better than five while the full run stays
 * near 10 minutes), `BENCH_SCALE` (multiplies every request count, default 1), `BENCH_DIR`
 * (where the 1 GiB test files go, default the system's temp directory; it must be on a real
 * disk, not tmpfs, for the O_DIRECT cases), `BENCH_CASES` (comma-separated substrings: run
 * only the cases whose name contains one of them, e.g. `BENCH_CASES=convert,QD1`),
 * `BENCH_NBD_WARMUP` (untimed requests each NBD server serves before a `qemu-img bench` run,
 * default 10000; 0: time fresh servers, see `nbd_cases.ts`).
 *
 * @module
 */

import { Graph } from "@blockgraph/core";
import { defaultRegistry, FileInstance } from "@blockgraph/drivers";
import { ensurePeers } from "../tests/peers.ts";
import { fileCases, nbdCases, nullCoCases } from "./cases.ts";
import { bundledCli, CONVERT_CASE_NAMES, convertCases, lazyConvertImages } from "./convert.ts";
import { type BenchCase, formatTable, LAG_P99_LIMIT_MS, type Row, runCase } from "./harness.ts";
import { qcow2Cases, qcow2Images } from "./qcow2_cases.ts";
import { createTestFile, type TestFile } from "./test_file.ts";

const ROUNDS = Number(Deno.env.get("BENCH_ROUNDS") ?? 7);
const SCALE = Number(Deno.env.get("BENCH_SCALE") ?? 1);
const FILTERS = (Deno.env.get("BENCH_CASES") ?? "").split(",").map((s) => s.trim());
const FILE_SIZE = 1 << 30;
const DIR = Deno.env.get("BENCH_DIR");

/** Whether `name` is selected by `BENCH_CASES`. */
const selected = (name: string) => FILTERS.some((f) => name.includes(f));

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
const started = performance.now();
await ensurePeers(["qemu-img", "fio", "qemu-nbd", "nbdkit", "nbdcopy"]);
const log = (text: string) => console.error(text);
// The file and NBD cases share one test file; their names do not depend on its path, so they
// are listed with a placeholder first and the file is written only when one is selected.
const onFile = (path: string) => [
  ...fileCases(path, FILE_SIZE, SCALE),
  ...qcow2Cases(qcow2Images(path, FILE_SIZE), SCALE),
  ...nbdCases(path, FILE_SIZE, SCALE),
];
let file: TestFile | null = null;
if (onFile("").some((c) => selected(c.name))) {
  log("creating a 1 GiB test file, every byte written ...");
  file = await createTestFile(FILE_SIZE, DIR);
}
const convertImages = lazyConvertImages(FILE_SIZE, DIR);
const rows: Row[] = [];
let engines = "";
try {
  const cases: BenchCase[] = [
    ...nullCoCases(SCALE),
    ...(file ? onFile(file.path) : []),
    ...(CONVERT_CASE_NAMES.some(selected)
      ? convertCases(
        convertImages.images,
        bundledCli(async () => (await convertImages.images()).dir),
      )
      : []),
  ].filter((c) => selected(c.name));
  if (file) {
    const direct = await engineInUse(file.path, "io_uring", true);
    const buffered = await engineInUse(file.path, "io_uring", false);
    engines = `; ours asks aio=io_uring and gets ${direct} (O_DIRECT) / ${buffered} (buffered); ` +
      `test file ${file.path}`;
  }
  console.log(`rounds: ${ROUNDS} (medians), scale ${SCALE}${engines}`);
  for (const c of cases) rows.push(...await runCase(c, ROUNDS, log));
} finally {
  await file?.remove();
  await convertImages.remove();
}
console.log(
  "\nIOPS = requests / run time (convert: conversions per second, nbdcopy: MiB/s); ratio = " +
    "ours/peer of the medians (higher is better), per-round ratios = the two runs of each " +
    "round; CPU µs/req: ours is this process's CPU over the timed loop, qemu-img's and fio's " +
    "their whole child process (every thread, io_uring's io-wq workers included: child " +
    "rusage) less a run of the same command with no requests (qemu-img -c 0) or one (fio); " +
    "NBD: the server's CPU; convert: each whole command's (start-up included). Lag p99/max: how late a 10 ms interval timer in our process ran " +
    `during the timed loop (median of the rounds' p99, largest max); over ${LAG_P99_LIMIT_MS} ` +
    "ms p99 is a miss.\n",
);
console.log(formatTable(rows));
const fioNotes = rows.filter((r) =>
  r.peerReportedCpu !== undefined && Math.abs(r.peerReportedCpu - r.peerCpu) > 0.1 * r.peerCpu
);
for (const r of fioNotes) {
  console.log(
    `note: ${r.name}: ${r.peer}'s own CPU report (usr_cpu + sys_cpu, its job thread only) is ` +
      `${r.peerReportedCpu!.toFixed(2)} µs/req against ${r.peerCpu.toFixed(2)} whole-process: ` +
      "fio's figure leaves out the io-wq worker threads that carry buffered io_uring writes " +
      "(and its own main process); the table uses the whole-process figure.",
  );
}
const missed = [...new Set(rows.filter((r) => r.misses.length > 0).map((r) => r.name))];
console.log(
  missed.length === 0
    ? "every target met"
    : `${missed.length} case(s) missed a target: ${missed.join(", ")}`,
);
const wall = (performance.now() - started) / 1000;
const secs = Math.round(wall);
console.log(`whole run: ${Math.floor(secs / 60)} min ${secs % 60} s`);
