/**
 * qcow2's runtime options (QEMU 7.2's BlockdevOptionsQcow2) through QMP, against
 * qemu-storage-daemon 7.2: the same `blockdev-add`s and `blockdev-reopen`s on both daemons
 * must succeed or fail alike, with the same error class and text (cache sizes, the L2 cache
 * entry size, the cache clean interval, lazy refcounts on a version 2 image, overlap-check in
 * both of its forms), and an image written with every option set must be left clean for
 * `qemu-img check`.
 *
 * @module
 */

import { deepStrictEqual as assertEquals } from "node:assert";
import type { TestQmpClient } from "../packages/cli/daemon/testing_qmp_client.ts";
import { ensurePeers } from "./peers.ts";
import { mustPeer } from "./peer_run.ts";
import { ourDaemonSession, qsdSession } from "./qmp_sessions.ts";
import { expectQemuClean } from "./interop_qcow2_helpers.ts";

/** The runtime options of each `blockdev-add` tried, good and bad. */
const CASES: Record<string, unknown>[] = [
  { "cache-size": 1048576, "l2-cache-size": 65536, "refcount-cache-size": 65536 },
  { "cache-size": 65536, "l2-cache-size": 131072 },
  { "cache-size": 65536, "refcount-cache-size": 131072 },
  { "cache-size": 1048576, "l2-cache-size": 65536 },
  { "cache-size": 1048576, "refcount-cache-size": 262144 },
  { "cache-size": 100000 },
  { "cache-size": -1 },
  { "l2-cache-entry-size": 1000 },
  { "l2-cache-entry-size": 256 },
  { "l2-cache-entry-size": 131072 },
  { "l2-cache-entry-size": 4096, "l2-cache-size": 8192 },
  { "refcount-cache-size": 2 ** 50 },
  { "cache-size": 2 ** 60, "refcount-cache-size": 0 },
  { "cache-clean-interval": -1 },
  { "cache-clean-interval": 2 ** 32 },
  { "cache-clean-interval": 0 },
  { "lazy-refcounts": "on" },
  { "overlap-check": "blubb" },
  { "overlap-check": 5 },
  { "overlap-check": "none" },
  { "overlap-check": { template: "blubb" } },
  { "overlap-check": { template: "none", "main-header": "x" } },
  { "overlap-check": { bogus: true } },
  { "overlap-check": { template: "constant", "active-l2": true, "inactive-l2": false } },
  { "pass-discard-request": 1 },
  {
    "lazy-refcounts": true,
    "pass-discard-request": true,
    "pass-discard-snapshot": false,
    "pass-discard-other": true,
    "overlap-check": "all",
    "cache-clean-interval": 1,
    "cache-size": 2097152,
    "l2-cache-entry-size": 4096,
  },
];

/**
 * Each case's answer on `q`: the error, or "ok" (then the node is removed again); at the end
 * lazy refcounts on the version 2 image, read-write and read-only.
 */
async function answers(q: TestQmpClient, dir: string): Promise<unknown[]> {
  const out: unknown[] = [];
  const add = async (image: string, extra: Record<string, unknown>) => {
    const r = await q.execute("blockdev-add", {
      driver: "qcow2",
      "node-name": "q",
      file: { driver: "file", filename: `${dir}/${image}` },
      ...extra,
    });
    if ("error" in r) return r.error;
    await q.ok("blockdev-del", { "node-name": "q" });
    return "ok";
  };
  for (const c of CASES) out.push([c, await add("v3.qcow2", c)]);
  for (const ro of [false, true]) {
    out.push(["v2", ro, await add("v2.qcow2", { "lazy-refcounts": true, "read-only": ro })]);
  }
  return out;
}

/**
 * Opens the version 3 image with `lazy-refcounts` (its header has none) and QEMU's other
 * options, writes, reopens with other options (what QEMU lets a reopen change), writes again
 * and closes: each reopen's answer.
 */
async function reopens(q: TestQmpClient, dir: string): Promise<unknown[]> {
  const base = { driver: "qcow2", "node-name": "q", file: "f" };
  await q.ok("blockdev-add", { driver: "file", "node-name": "f", filename: `${dir}/v3.qcow2` });
  await q.ok("blockdev-add", { ...base, "lazy-refcounts": true, "cache-clean-interval": 1 });
  const out: unknown[] = [];
  const reopen = async (extra: Record<string, unknown>) => {
    const r = await q.execute("blockdev-reopen", { options: [{ ...base, ...extra }] });
    out.push([extra, "error" in r ? r.error : "ok"]);
  };
  await reopen({ "lazy-refcounts": false, "cache-size": 65536, "l2-cache-size": 131072 });
  await reopen({ "l2-cache-entry-size": 3000 });
  await reopen({ "overlap-check": { template: "bogus" } });
  await reopen({ "lazy-refcounts": false, "l2-cache-size": 262144, "overlap-check": "none" });
  await reopen({ "lazy-refcounts": true, "cache-clean-interval": 0, "pass-discard-other": true });
  await q.ok("blockdev-del", { "node-name": "q" });
  await q.ok("blockdev-del", { "node-name": "f" });
  return out;
}

Deno.test("qcow2 runtime options in blockdev-add and blockdev-reopen answer as qemu-storage-daemon's", async () => {
  await ensurePeers(["qemu-img", "qemu-storage-daemon"]);
  const dir = await Deno.makeTempDir();
  try {
    await mustPeer("qemu-img", ["create", "-q", "-f", "qcow2", `${dir}/v3.qcow2`, "64M"]);
    await mustPeer("qemu-img", [
      "create",
      "-q",
      "-f",
      "qcow2",
      "-o",
      "compat=0.10",
      `${dir}/v2.qcow2`,
      "64M",
    ]);
    const theirs = await qsdSession(`${dir}/qsd.sock`, async (q) => ({
      add: await answers(q, dir),
      reopen: await reopens(q, dir),
    }));
    await expectQemuClean(`${dir}/v3.qcow2`, "after qemu-storage-daemon");
    const mine = await ourDaemonSession(`${dir}/qmp.sock`, async (q) => ({
      add: await answers(q, dir),
      reopen: await reopens(q, dir),
    }));
    assertEquals(mine, theirs);
    await expectQemuClean(`${dir}/v3.qcow2`, "after our daemon");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("qcow2 lazy-refcounts=on over an image without them leaves it clean on close, and dirty while written", async () => {
  await ensurePeers(["qemu-img", "qemu-storage-daemon"]);
  const dir = await Deno.makeTempDir();
  try {
    const img = `${dir}/a.qcow2`;
    await mustPeer("qemu-img", ["create", "-q", "-f", "qcow2", img, "64M"]);
    await ourDaemonSession(`${dir}/qmp.sock`, async (q) => {
      await q.ok("blockdev-add", {
        driver: "qcow2",
        "node-name": "q",
        "lazy-refcounts": true,
        file: { driver: "file", filename: img },
      });
      await q.ok("nbd-server-start", { addr: { type: "unix", data: { path: `${dir}/nbd` } } });
      await q.ok("block-export-add", {
        type: "nbd",
        id: "e",
        "node-name": "q",
        writable: true,
      });
      await mustPeer("qemu-io", [
        "-f",
        "raw",
        "-c",
        "write -P 7 0 1M",
        "-c",
        "flush",
        `nbd+unix:///q?socket=${dir}/nbd`,
      ]);
      // Refcounts were not written: the header's dirty bit says so (qemu-img -U reads it).
      const info = JSON.parse(
        await mustPeer("qemu-img", ["info", "-U", "--output=json", img]),
      ) as { "dirty-flag": boolean };
      assertEquals(info["dirty-flag"], true);
      await q.ok("block-export-del", { id: "e" });
      await q.ok("nbd-server-stop");
      await q.ok("blockdev-del", { "node-name": "q" });
    });
    const info = JSON.parse(await mustPeer("qemu-img", ["info", "--output=json", img])) as {
      "dirty-flag": boolean;
      "format-specific": { data: { "lazy-refcounts": boolean } };
    };
    assertEquals(info["dirty-flag"], false);
    assertEquals(info["format-specific"].data["lazy-refcounts"], false);
    await expectQemuClean(img, "after a clean close");
    await mustPeer("qemu-io", ["-f", "qcow2", "-c", "read -P 7 0 1M", img]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
