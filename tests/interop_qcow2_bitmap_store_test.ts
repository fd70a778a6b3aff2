/**
 * Where and how the qcow2 driver stores persistent bitmaps, against QEMU 7.2: the same
 * operations on two copies of an image, one by QEMU (qemu-img, qemu-io, qemu-storage-daemon),
 * one by blockgraph, leave images that `qemu-img info` and `qemu-img check` describe alike,
 * with the same image end offset and `qemu-img map`; where QEMU's bytes are deterministic,
 * the header cluster (or the whole file) is the same too. Covers 512-byte clusters (the
 * header has no feature name table, so the bitmaps extension fits), a store that fails (it
 * frees what it allocated), the directory order of bitmaps added in one session, and the
 * in_use marking of a read/write open (in place: the image does not grow).
 *
 * @module
 */

import { deepStrictEqual as assertEquals } from "node:assert";
import { captureIo, runImg, runIo } from "@blockgraph/cli";
import { Graph } from "@blockgraph/core";
import { defaultRegistry } from "@blockgraph/drivers";
import type { TestQmpClient } from "../packages/cli/daemon/testing_qmp_client.ts";
import { ensurePeers } from "./peers.ts";
import { mustPeer, qemuCreateQcow2, runPeer } from "./peer_run.ts";
import { ourDaemonSession, qsdSession } from "./qmp_sessions.ts";

/** `blockgraph img ...` in process: exit status and standard error. */
async function img(args: string[]): Promise<{ status: number; err: string }> {
  const io = captureIo();
  const status = await runImg(args, io);
  return { status, err: io.stderr };
}

/** What QEMU's tools say of the image: info, check, end offset and map, as JSON. */
async function describe(path: string): Promise<unknown> {
  const dir = path.slice(0, path.lastIndexOf("/"));
  const info = JSON.parse(
    (await mustPeer("qemu-img", ["info", "-U", "--output=json", path])).replaceAll(dir, "DIR"),
  );
  delete info.filename;
  delete info["actual-size"];
  const r = await runPeer("qemu-img", ["check", "--output=json", path]);
  const check = JSON.parse(r.out);
  delete check.filename;
  const map = JSON.parse(await mustPeer("qemu-img", ["map", "-U", "--output=json", path]));
  return { info, check: { status: r.code, ...check }, map: mapping(map) };
}

interface MapEntry {
  start: number;
  length: number;
  present: boolean;
  data: boolean;
  zero?: boolean;
  offset?: number;
}

/**
 * Where guest ranges are in the file, without the zero flag: QEMU's write path leaves the
 * zero tail of a new cluster as a hole that map reports as zero data, ours writes zeroes.
 */
function mapping(map: MapEntry[]): MapEntry[] {
  const out: MapEntry[] = [];
  for (const { zero: _, ...e } of map) {
    const last = out.at(-1);
    const hostNext = last?.offset === undefined ? undefined : last.offset + last.length;
    if (
      last && last.present === e.present && last.data === e.data && hostNext === e.offset
    ) {
      last.length += e.length;
    } else if (
      last && last.offset === undefined && e.offset === undefined && last.data === e.data
    ) {
      last.length += e.length;
    } else out.push({ ...e });
  }
  return out;
}

/** The first cluster of the image (header, extensions, backing file name). */
async function headerCluster(path: string, cs: number): Promise<Uint8Array> {
  return (await Deno.readFile(path)).subarray(0, cs);
}

/** Runs `fn` with two fresh folders, "a" for QEMU and "b" for blockgraph. */
async function withDirs(fn: (a: string, b: string) => Promise<void>): Promise<void> {
  await ensurePeers(["qemu-img", "qemu-io"]);
  const root = await Deno.makeTempDir({ prefix: "blockgraph-bitmap-store-" });
  try {
    await Deno.mkdir(`${root}/a`);
    await Deno.mkdir(`${root}/b`);
    await fn(`${root}/a`, `${root}/b`);
  } finally {
    await Deno.remove(root, { recursive: true });
  }
}

/** Prints to console.error during `fn` are collected instead (the driver reports there). */
async function consoleErrors(fn: () => Promise<void>): Promise<string[]> {
  const seen: string[] = [];
  const prev = console.error;
  console.error = (...args: unknown[]) => seen.push(args.join(" "));
  try {
    await fn();
  } finally {
    console.error = prev;
  }
  return seen;
}

Deno.test("qcow2 bitmaps with 512-byte clusters are stored as qemu-img stores them", async () => {
  await withDirs(async (a, b) => {
    for (const cs of [512, 4096, 65536]) {
      const x = `${a}/c${cs}.qcow2`;
      const y = `${b}/c${cs}.qcow2`;
      const opts = ["-f", "qcow2", "-o", `cluster_size=${cs}`];
      await mustPeer("qemu-img", ["create", "-q", ...opts, x, "1M"]);
      assertEquals(await img(["create", "-q", ...opts, y, "1M"]), { status: 0, err: "" });
      // No feature name table at 4k and below (QEMU's rule), so the headers are the same.
      assertEquals(await headerCluster(y, cs), await headerCluster(x, cs), `create ${cs}`);
      await mustPeer("qemu-img", ["bitmap", "--add", x, "b0"]);
      await mustPeer("qemu-img", ["bitmap", "--add", "-g", "512", "--disable", x, "b1"]);
      assertEquals(await img(["bitmap", "--add", y, "b0"]), { status: 0, err: "" });
      assertEquals(await img(["bitmap", "--add", "-g", "512", "--disable", y, "b1"]), {
        status: 0,
        err: "",
      });
      assertEquals({ cs, ...(await describe(y) as object) }, {
        cs,
        ...(await describe(x) as object),
      });
      assertEquals(await headerCluster(y, cs), await headerCluster(x, cs), `bitmaps ${cs}`);
    }
    // An image blockgraph created before (with a feature name table at 512 bytes): QEMU drops
    // the table on its first header update, and so does blockgraph now.
    const old = `${a}/old.qcow2`;
    await qemuCreateQcow2(old, "1M", "cluster_size=512");
    const bytes = await Deno.readFile(old);
    const table = new Uint8Array(8 + 384);
    new DataView(table.buffer).setUint32(0, 0x6803f857);
    new DataView(table.buffer).setUint32(4, 384);
    bytes.set(table, 112);
    for (const d of [a, b]) await Deno.writeFile(`${d}/ft.qcow2`, bytes);
    await mustPeer("qemu-img", ["bitmap", "--add", `${a}/ft.qcow2`, "b0"]);
    assertEquals(await img(["bitmap", "--add", `${b}/ft.qcow2`, "b0"]), { status: 0, err: "" });
    assertEquals(await describe(`${b}/ft.qcow2`), await describe(`${a}/ft.qcow2`));
    assertEquals(
      await headerCluster(`${b}/ft.qcow2`, 512),
      await headerCluster(`${a}/ft.qcow2`, 512),
    );
  });
});

Deno.test("qcow2 bitmaps: a store that does not fit the header frees what it allocated", async () => {
  await withDirs(async (a, b) => {
    // Bits to merge in, so that the failed store had allocated data clusters too.
    await mustPeer("qemu-img", ["create", "-q", "-f", "qcow2", `${a}/src.qcow2`, "1M"]);
    await mustPeer("qemu-img", ["bitmap", "--add", "-g", "512", `${a}/src.qcow2`, "s"]);
    await mustPeer("qemu-io", ["-c", "write 0 4k", "-c", "write 512k 64k", `${a}/src.qcow2`]);
    await Deno.copyFile(`${a}/src.qcow2`, `${b}/src.qcow2`);
    // 366 bytes of backing file name fit a 512-byte header, but not with the bitmaps extension.
    const name = "./" + "dd/../".repeat(60) + "base.qcow2";
    for (const d of [a, b]) {
      await Deno.mkdir(`${d}/dd`);
      await qemuCreateQcow2(`${d}/base.qcow2`, "1M", "cluster_size=512");
    }
    const opts = ["-f", "qcow2", "-o", "cluster_size=512", "-b", name, "-F", "qcow2"];
    await mustPeer("qemu-img", ["create", "-q", ...opts, `${a}/bk.qcow2`, "1M"]);
    await Deno.copyFile(`${a}/bk.qcow2`, `${b}/bk.qcow2`);
    const args = (d: string) => [
      "bitmap",
      "--add",
      "-g",
      "512",
      "--merge",
      "s",
      "-b",
      `${d}/src.qcow2`,
      "-F",
      "qcow2",
      `${d}/bk.qcow2`,
      "b0",
    ];
    const theirs = await runPeer("qemu-img", args(a));
    let mine = { status: -1, err: "" };
    const printed = await consoleErrors(async () => {
      mine = await img(args(b));
    });
    assertEquals(mine.status, theirs.code);
    const why = (s: string) => s.replace(/^.*node '[^']*': /s, "").trim();
    assertEquals(why(printed.join("\n")), why(theirs.err));
    assertEquals(why(theirs.err), "Failed to update bitmap extension: No space left on device");
    const state = await describe(`${b}/bk.qcow2`);
    assertEquals(state, await describe(`${a}/bk.qcow2`));
    assertEquals((state as { check: { status: number } }).check.status, 0);
  });
});

/** The QMP steps of the order test, run on both daemons. */
const SESSIONS: [string, Record<string, unknown>][][] = [
  [
    ["block-dirty-bitmap-add", { name: "b1", persistent: true }],
    ["block-dirty-bitmap-add", { name: "b2", persistent: true, granularity: 4096 }],
    ["block-dirty-bitmap-add", { name: "t", persistent: false }],
    ["block-dirty-bitmap-add", { name: "b3", persistent: true, disabled: true }],
  ],
  [
    ["block-dirty-bitmap-add", { name: "b4", persistent: true }],
    ["block-dirty-bitmap-remove", { name: "b2" }],
    ["block-dirty-bitmap-add", { name: "b2", persistent: true, granularity: 512 }],
    ["block-dirty-bitmap-remove", { name: "old" }],
    ["block-dirty-bitmap-add", { name: "b5", persistent: true }],
  ],
];

/** Opens `path` as node q0 over QMP, runs `steps` on it, and closes it again. */
async function session(
  q: TestQmpClient,
  path: string,
  steps: [string, Record<string, unknown>][],
): Promise<void> {
  await q.ok("blockdev-add", {
    driver: "qcow2",
    "node-name": "q0",
    file: { driver: "file", filename: path },
  });
  for (const [cmd, args] of steps) await q.ok(cmd, { node: "q0", ...args });
  await q.ok("blockdev-del", { "node-name": "q0" });
}

Deno.test("qcow2 bitmaps added in one session are stored newest first, as QEMU does", async () => {
  await ensurePeers(["qemu-storage-daemon"]);
  await withDirs(async (a, b) => {
    await mustPeer("qemu-img", ["create", "-q", "-f", "qcow2", `${a}/o.qcow2`, "8M"]);
    await mustPeer("qemu-img", ["bitmap", "--add", `${a}/o.qcow2`, "old"]);
    await Deno.copyFile(`${a}/o.qcow2`, `${b}/o.qcow2`);
    for (const [i, steps] of SESSIONS.entries()) {
      await qsdSession(`${a}/qsd.sock`, (q) => session(q, `${a}/o.qcow2`, steps));
      await ourDaemonSession(`${b}/qmp.sock`, (q) => session(q, `${b}/o.qcow2`, steps));
      assertEquals(
        { session: i, ...(await describe(`${b}/o.qcow2`) as object) },
        { session: i, ...(await describe(`${a}/o.qcow2`) as object) },
      );
    }
    const info = JSON.parse(await mustPeer("qemu-img", ["info", "--output=json", `${b}/o.qcow2`]));
    assertEquals(
      info["format-specific"].data.bitmaps.map((x: { name: string }) => x.name),
      ["b3", "b1", "b5", "b2", "b4"],
    );
  });
});

/** The images of the in_use tests: bitmaps qemu-img made, with bits qemu-io wrote. */
async function inUseImages(dir: string): Promise<string[]> {
  const q = (...args: string[]) => mustPeer("qemu-img", args);
  await q("create", "-q", "-f", "qcow2", `${dir}/one.qcow2`, "4M");
  await q("bitmap", "--add", `${dir}/one.qcow2`, "b");
  await mustPeer("qemu-io", ["-c", "write 60k 4k", `${dir}/one.qcow2`]);
  await q("create", "-q", "-f", "qcow2", `${dir}/three.qcow2`, "64M");
  await q("bitmap", "--add", `${dir}/three.qcow2`, "b0");
  await mustPeer("qemu-io", ["-c", "write 1M 64k", "-c", "write 40M 4k", `${dir}/three.qcow2`]);
  await q("bitmap", "--add", "-g", "4k", `${dir}/three.qcow2`, "b1");
  await q("bitmap", "--add", "--disable", `${dir}/three.qcow2`, "b2");
  await mustPeer("qemu-io", ["-c", "write 2M 12k", `${dir}/three.qcow2`]);
  await q("create", "-q", "-f", "qcow2", "-o", "cluster_size=512", `${dir}/small.qcow2`, "1M");
  await q("bitmap", "--add", `${dir}/small.qcow2`, "s0");
  await q("bitmap", "--add", "-g", "512", `${dir}/small.qcow2`, "s1");
  await mustPeer("qemu-io", ["-c", "write 4k 4k", `${dir}/small.qcow2`]);
  return ["one.qcow2", "three.qcow2", "small.qcow2"];
}

Deno.test("qcow2 bitmaps are marked in use in place, as QEMU marks them", async () => {
  await withDirs(async (a, b) => {
    for (const name of await inUseImages(a)) {
      await Deno.copyFile(`${a}/${name}`, `${b}/${name}`);
      // A crash right after the read/write open: qemu-io kills itself, blockgraph's copy is
      // taken while the node is open.
      await runPeer("qemu-io", ["-c", "sigraise 9", `${a}/${name}`]);
      const graph = new Graph({ registry: defaultRegistry() });
      const node = await graph.open({
        driver: "qcow2",
        file: { driver: "file", filename: `${b}/${name}` },
      }, "t");
      try {
        await Deno.copyFile(`${b}/${name}`, `${b}/crashed-${name}`);
      } finally {
        await node.unref("t");
        await graph.closeAll();
      }
      const x = `${a}/${name}`;
      const y = `${b}/crashed-${name}`;
      assertEquals({ name, ...(await describe(y) as object) }, {
        name,
        ...(await describe(x) as object),
      });
      // The directory was rewritten where it was: nothing else changed.
      assertEquals({ name, bytes: await Deno.readFile(y) }, {
        name,
        bytes: await Deno.readFile(x),
      });
    }
  });
});

Deno.test("qcow2 bitmaps after a read/write session end where QEMU's end", async () => {
  await withDirs(async (a, b) => {
    for (const name of await inUseImages(a)) {
      await Deno.copyFile(`${a}/${name}`, `${b}/${name}`);
      // Inside L2 tables that exist (blockgraph allocates a new L2 table after the data
      // cluster where QEMU allocates it before, a difference of the write path).
      const cmds = ["-c", "write 8k 4k", "-c", "write 20k 2k"];
      await mustPeer("qemu-io", [...cmds, `${a}/${name}`]);
      const io = captureIo();
      assertEquals(await runIo([...cmds, `${b}/${name}`], io), 0, io.stderr);
      assertEquals(
        { name, ...(await describe(`${b}/${name}`) as object) },
        { name, ...(await describe(`${a}/${name}`) as object) },
      );
    }
  });
});
