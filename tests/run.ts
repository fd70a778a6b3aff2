/**
 * The test command (`deno task test`): installs the interop peers the tests need when they
 * are missing, runs every test, and ends with a plain "N passed, N failed" line.
 *
 * @module
 */

import { ensurePeers } from "./peers.ts";

await ensurePeers(["qemu-img", "qemu-io"]);

const report = await Deno.makeTempFile({ prefix: "blockgraph-junit-", suffix: ".xml" });
const args = ["test", "-A", "--quiet", `--junit-path=${report}`, ...Deno.args];
const child = new Deno.Command(Deno.execPath(), { args, stdout: "inherit", stderr: "inherit" })
  .spawn();
const status = await child.status;

let passed = 0;
let failed = 0;
let skipped = 0;
try {
  const xml = await Deno.readTextFile(report);
  for (const m of xml.matchAll(/<testcase\b[^>]*?(\/>|>([\s\S]*?)<\/testcase>)/g)) {
    const body = m[2] ?? "";
    if (/<failure\b/.test(body) || /<error\b/.test(body)) failed++;
    else if (/<skipped\b/.test(body)) skipped++;
    else passed++;
  }
} catch {
  // No report: the runner failed before running anything; its exit status says why.
} finally {
  await Deno.remove(report).catch(() => {});
}
console.log(`${passed} passed, ${failed} failed` + (skipped ? `, ${skipped} skipped` : ""));
Deno.exit(status.code);
