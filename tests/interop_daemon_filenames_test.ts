/**
 * The file names `query-named-block-nodes` gives, against qemu-storage-daemon 7.2: the same
 * `blockdev-add`s on both (files, raw windows, null-co sizes, qcow2 over a referenced file
 * with its own backing file, none, or another) must give the same `file` and `backing_file`
 * for every named node: a plain filename where one says what the node reads, else QEMU's
 * `json:{...}` of its strong options in QEMU's key order.
 *
 * @module
 */

import { deepStrictEqual as assertEquals } from "node:assert";
import type { TestQmpClient } from "../packages/cli/daemon/testing_qmp_client.ts";
import { ensurePeers } from "./peers.ts";
import { mustPeer } from "./peer_run.ts";
import { ourDaemonSession, qsdSession } from "./qmp_sessions.ts";

/** The blockdev-adds, in order, on images in `dir`. */
function blockdevs(dir: string): Record<string, unknown>[] {
  const ro = { "read-only": true };
  return [
    { driver: "file", "node-name": "f0", filename: `${dir}/top.qcow2`, ...ro },
    { driver: "file", "node-name": "b0", filename: `${dir}/base.raw`, ...ro },
    { driver: "raw", "node-name": "r0", file: "b0", ...ro },
    { driver: "raw", "node-name": "r1", offset: 512, size: 4096, file: "b0", ...ro },
    { driver: "qcow2", "node-name": "q0", file: "f0", backing: null, ...ro },
    { driver: "qcow2", "node-name": "q1", file: "f0", backing: "r1", ...ro },
    { driver: "qcow2", "node-name": "q2", file: "f0", ...ro },
    { driver: "null-co", "node-name": "n0" },
    { driver: "null-co", "node-name": "n1", size: 1048576, "latency-ns": 5 },
    { driver: "null-co", "node-name": "n2", "read-zeroes": true },
    { driver: "raw", "node-name": "r2", file: { driver: "null-co", size: 65536 } },
  ];
}

/** Adds `blockdevs` through `q` and lists each named node's file and backing file. */
async function names(q: TestQmpClient, dir: string): Promise<unknown[]> {
  for (const b of blockdevs(dir)) await q.ok("blockdev-add", b);
  const nodes = await q.ok("query-named-block-nodes", { flat: true }) as {
    "node-name": string;
    file: string;
    backing_file?: string;
  }[];
  return nodes.filter((n) => !n["node-name"].startsWith("#"))
    .map((n) => [n["node-name"], n.file, n.backing_file ?? null])
    .sort((a, b) => String(a[0]).localeCompare(String(b[0])));
}

Deno.test("query-named-block-nodes names nodes as qemu-storage-daemon does, json:{...} and all", async () => {
  await ensurePeers(["qemu-img", "qemu-storage-daemon"]);
  const dir = await Deno.makeTempDir();
  try {
    await mustPeer("qemu-img", ["create", "-q", "-f", "raw", `${dir}/base.raw`, "1M"]);
    await mustPeer("qemu-img", [
      "create",
      "-q",
      "-f",
      "qcow2",
      "-b",
      "base.raw",
      "-F",
      "raw",
      `${dir}/top.qcow2`,
    ]);
    const theirs = await qsdSession(`${dir}/qsd.sock`, (q) => names(q, dir));
    const mine = await ourDaemonSession(`${dir}/qmp.sock`, (q) => names(q, dir));
    assertEquals(mine, theirs);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
