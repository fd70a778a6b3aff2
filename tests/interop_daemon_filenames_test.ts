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

/**
 * In a new folder holding `top.qcow2` over `base.<fmt>`, what `probe` finds through our
 * daemon must be what it finds through qemu-storage-daemon.
 */
async function sameAsQsd(
  fmt: "raw" | "qcow2",
  probe: (q: TestQmpClient, dir: string) => Promise<unknown[]>,
): Promise<void> {
  await ensurePeers(["qemu-img", "qemu-storage-daemon"]);
  const dir = await Deno.makeTempDir();
  try {
    const base = `base.${fmt}`;
    await mustPeer("qemu-img", ["create", "-q", "-f", fmt, `${dir}/${base}`, "1M"]);
    await mustPeer("qemu-img", [
      "create",
      "-q",
      "-f",
      "qcow2",
      "-b",
      base,
      "-F",
      fmt,
      `${dir}/top.qcow2`,
    ]);
    const theirs = await qsdSession(`${dir}/qsd.sock`, (q) => probe(q, dir));
    const mine = await ourDaemonSession(`${dir}/qmp.sock`, (q) => probe(q, dir));
    assertEquals(mine, theirs);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("query-named-block-nodes names nodes as qemu-storage-daemon does, json:{...} and all", () =>
  sameAsQsd("raw", names));

/** `v` as JSON with every object's keys sorted (QEMU's key order is its hash order). */
function canonical(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonical).join(",")}]`;
  if (typeof v === "object" && v !== null) {
    const o = v as Record<string, unknown>;
    return `{${Object.keys(o).sort().map((k) => `${JSON.stringify(k)}:${canonical(o[k])}`)}}`;
  }
  return JSON.stringify(v);
}

/** Every node query-named-block-nodes lists (flat or not), keyed and sorted for comparing. */
async function nodeInfos(q: TestQmpClient, dir: string): Promise<unknown[]> {
  await q.ok("blockdev-add", {
    driver: "qcow2",
    "node-name": "top",
    "read-only": true,
    file: { driver: "file", filename: `${dir}/top.qcow2` },
  });
  await q.ok("blockdev-add", {
    driver: "file",
    "node-name": "f0",
    filename: `${dir}/base.qcow2`,
    "read-only": true,
  });
  const out = [];
  for (const flat of [false, true]) {
    const nodes = await q.ok("query-named-block-nodes", { flat }) as Record<string, unknown>[];
    out.push(
      nodes.map((n) => {
        const name = String(n["node-name"]).startsWith("#") ? "#" : n["node-name"];
        return canonical({ ...n, "node-name": name });
      }).sort(),
    );
  }
  return out;
}

Deno.test("query-named-block-nodes reports each node's ImageInfo as qemu-storage-daemon does", () =>
  sameAsQsd("qcow2", nodeInfos));

/**
 * The order query-named-block-nodes lists nodes in (newest first): a format node's `file`
 * opened with it comes just after it (QEMU opens it first), the backing file it finds in its
 * header before it. Generated names are shown as `#`.
 */
async function order(q: TestQmpClient, dir: string): Promise<unknown[]> {
  for (const b of blockdevs(dir)) await q.ok("blockdev-add", b);
  await q.ok("blockdev-add", {
    driver: "qcow2",
    "node-name": "t1",
    "read-only": true,
    file: { driver: "file", "node-name": "t1f", filename: `${dir}/top.qcow2` },
  });
  const out = [];
  for (const flat of [false, true]) {
    const nodes = await q.ok("query-named-block-nodes", { flat }) as { "node-name": string }[];
    out.push(nodes.map((n) => n["node-name"].startsWith("#") ? "#" : n["node-name"]));
  }
  return out;
}

Deno.test("query-named-block-nodes lists nodes in qemu-storage-daemon's order", () =>
  sameAsQsd("raw", order));
