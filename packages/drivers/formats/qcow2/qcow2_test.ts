import {
  BlockStatusFlags,
  DriverRegistry,
  type Graph,
  type Node,
  ReqFlags,
} from "@blockgraph/core";
import {
  assert,
  assertBytesEqual,
  assertEquals,
  assertRejectsWith,
  CONFORMANCE_HOLDER,
  pattern,
  runConformance,
} from "../../conformance/mod.ts";
import { formatOverFile } from "../file_target_testing.ts";
import { fileDriver } from "../../protocols/file.ts";
import { memoryDriver } from "../../protocols/memory.ts";
import { rawDriver } from "../raw.ts";
import { formatQcow2, type Qcow2CreateParams } from "./create.ts";
import type { Qcow2Instance } from "./instance.ts";
import { qcow2Driver } from "./mod.ts";
import { qcow2Params, readAll, withGraph } from "./test_fixtures.ts";

const registry = new DriverRegistry([memoryDriver, fileDriver, rawDriver, qcow2Driver]);
const SIZE = 4 * 1024 * 1024;

function params(over: Partial<Qcow2CreateParams> = {}): Qcow2CreateParams {
  return qcow2Params({ size: SIZE, ...over });
}

let memCount = 0;

/** A qcow2 node over a fresh memory node formatted with `p`. */
async function openOnMemory(
  graph: Graph,
  p: Qcow2CreateParams,
  extra: Record<string, unknown> = {},
  holder = CONFORMANCE_HOLDER,
): Promise<Node> {
  const name = `mem${++memCount}`;
  const mem = await graph.open({ driver: "memory", "node-name": name }, "setup");
  await formatQcow2(mem, p);
  try {
    return await graph.open({ driver: "qcow2", file: name, ...extra }, holder);
  } finally {
    await mem.unref("setup");
  }
}

for (
  const [label, p] of [
    ["v3, 64k clusters", params()],
    ["v2, 4k clusters", params({ version: 2, clusterSize: 4096 })],
    ["v3, 512-byte clusters, 1-bit refcounts", params({ clusterSize: 512, refcountBits: 1 })],
  ] as const
) {
  runConformance(`qcow2 over memory (${label})`, {
    registry,
    capabilities: { persistent: true, resize: true, growsOnWrite: false },
    open: (graph, { readOnly }) =>
      openOnMemory(graph, p, { discard: "unmap", "read-only": readOnly }),
  });
}

runConformance(
  "qcow2 over file",
  formatOverFile(qcow2Driver, registry, { persistent: true, resize: true, growsOnWrite: false }, {
    size: SIZE,
    filename: "disk.qcow2",
  }),
);

Deno.test("qcow2 allocating write zeroes the rest of the cluster", () =>
  withGraph(registry, async (graph) => {
    const node = await openOnMemory(graph, params({ clusterSize: 4096 }), {}, "t");
    await node.write(4096 + 100, pattern(10, 1));
    const got = await readAll(node, 4096, 4096);
    const want = new Uint8Array(4096);
    want.set(pattern(10, 1), 100);
    assertBytesEqual(got, want, "cluster after a partial write");
    const st = await node.blockStatus(4096, 4096);
    assertEquals(st.pnum, 4096);
    assert(st.status & 0x1, "the cluster is data");
    await node.unref("t");
  }));

Deno.test("qcow2 partial-cluster write copies the rest from the backing file", () =>
  withGraph(registry, async (graph) => {
    const base = await graph.open({ driver: "memory", "node-name": "base", size: SIZE }, "t");
    await base.write(0, pattern(SIZE, 3));
    const top = await openOnMemory(graph, params({ clusterSize: 4096 }), { backing: "base" }, "t");
    await top.write(8192 + 7, pattern(5, 9));
    const want = pattern(SIZE, 3).slice(0, 16384);
    want.set(pattern(5, 9), 8192 + 7);
    assertBytesEqual(await readAll(top, 0, 16384), want, "overlay over backing");
    // The backing file is unchanged.
    assertBytesEqual(await readAll(base, 8192, 4096), pattern(SIZE, 3).slice(8192, 12288), "base");
    await top.unref("t");
    await base.unref("t");
  }));

Deno.test("qcow2 reads past the end of a shorter backing file as zeros", () =>
  withGraph(registry, async (graph) => {
    const base = await graph.open({ driver: "memory", "node-name": "base", size: 6000 }, "t");
    await base.write(0, pattern(6000, 4));
    const top = await openOnMemory(graph, params({ clusterSize: 4096 }), { backing: "base" }, "t");
    const want = new Uint8Array(12288);
    want.set(pattern(6000, 4));
    assertBytesEqual(await readAll(top, 0, 12288), want, "read across the backing end");
    await top.write(5000, pattern(10, 2));
    want.set(pattern(10, 2), 5000);
    assertBytesEqual(await readAll(top, 0, 12288), want, "after a COW across the backing end");
    await top.unref("t");
    await base.unref("t");
  }));

Deno.test("qcow2 concurrent writes to one unallocated cluster both land", () =>
  withGraph(registry, async (graph) => {
    const node = await openOnMemory(graph, params({ clusterSize: 65536 }), {}, "t");
    const img = (node.instance as Qcow2Instance).image;
    const writes: Promise<void>[] = [];
    const want = new Uint8Array(65536);
    for (let i = 0; i < 16; i++) {
      const data = pattern(1000, i + 1);
      writes.push(node.write(i * 4000 + 3, data));
      want.set(data, i * 4000 + 3);
    }
    await Promise.all(writes);
    assertBytesEqual(await readAll(node, 0, 65536), want, "cluster after concurrent writes");
    // One data cluster: the header, refcount table, refcount block, L1, one L2, one data.
    assertEquals(img.refcounts.endCluster, 6, "clusters in use");
    await node.unref("t");
  }));

Deno.test("qcow2 write-zeroes and discard of a cluster a write is allocating wait for it, and neither hangs", () =>
  withGraph(registry, async (graph) => {
    const node = await openOnMemory(
      graph,
      params({ clusterSize: 65536 }),
      { discard: "unmap" },
      "t",
    );
    // The L2 table exists, so the write claims cluster 1 at once, before the zeroes ask.
    await node.write(0, pattern(512, 9));
    for (
      const [what, op] of [
        ["write-zeroes", () => node.pwriteZeroes(65536, 65536, ReqFlags.MAY_UNMAP)],
        ["discard", () => node.pdiscard(65536, 65536)],
      ] as const
    ) {
      const write = node.write(65536 + 4096, pattern(4096, 3));
      const second = op();
      let timer: ReturnType<typeof setTimeout> | undefined;
      const hung = new Promise<string>((r) => (timer = setTimeout(() => r("hung"), 5000)));
      const done = await Promise.race([Promise.all([write, second]).then(() => "done"), hung]);
      clearTimeout(timer);
      assertEquals(done, "done", `a write and a ${what} of its cluster`);
      // The second request came after the write: the cluster reads as zeros.
      assertBytesEqual(await readAll(node, 65536, 65536), new Uint8Array(65536), what);
    }
    await node.unref("t");
  }));

Deno.test("qcow2 allocations at depth 32 without the lock reuse freed clusters and stay consistent", () =>
  withGraph(registry, async (graph) => {
    // 4k clusters, 16-bit refcounts: a refcount block covers 2048 clusters; 4 MiB disk.
    const node = await openOnMemory(graph, params({ clusterSize: 4096 }), {}, "t");
    const inst = node.instance as Qcow2Instance;
    const want = new Uint8Array(SIZE);
    const round = async (seed: number, step: number) => {
      const jobs: Promise<void>[] = [];
      for (let off = 0; off < SIZE; off += step) {
        const data = pattern(1024, seed + off / step);
        want.set(data, off + 512);
        jobs.push(node.write(off + 512, data));
        if (jobs.length === 32) await Promise.race(jobs.splice(0, 1));
      }
      await Promise.all(jobs);
    };
    await round(1, 8192);
    await node.pwriteZeroes(0, SIZE / 2, ReqFlags.MAY_UNMAP);
    want.fill(0, 0, SIZE / 2);
    await round(7, 12288);
    await node.flush();
    const r = await inst.check("none");
    assertEquals(r.corruptions, 0, "corruptions after allocations and frees");
    assertEquals(r.leaks, 0, "leaks after allocations and frees");
    assertBytesEqual(await readAll(node, 0, SIZE), want, "disk contents");
    await node.unref("t");
  }));

Deno.test("qcow2 refcount table grows when the image outgrows it", () =>
  withGraph(registry, async (graph) => {
    // 512-byte clusters, 64-bit refcounts: one refcount block covers 64 clusters (32 KiB).
    const p = params({ clusterSize: 512, refcountBits: 64, size: 8 * 1024 * 1024 });
    const node = await openOnMemory(graph, p, {}, "t");
    const img = (node.instance as Qcow2Instance).image;
    const before = img.refcounts.place.offset;
    for (let i = 0; i < 100; i++) await node.write(i * 80000 + 3, pattern(65536, i));
    assert(img.refcounts.place.offset !== before, "the refcount table moved");
    for (let i = 0; i < 100; i++) {
      assertBytesEqual(await readAll(node, i * 80000 + 3, 65536), pattern(65536, i), `write ${i}`);
    }
    await node.unref("t");
  }));

Deno.test("qcow2 write-zeroes sets the zero flag and discard frees clusters", () =>
  withGraph(registry, async (graph) => {
    const node = await openOnMemory(
      graph,
      params({ clusterSize: 4096 }),
      { discard: "unmap" },
      "t",
    );
    const img = (node.instance as Qcow2Instance).image;
    await node.write(0, pattern(8 * 4096, 5));
    const used = img.refcounts.endCluster;
    await node.pwriteZeroes(4096, 4096);
    assertBytesEqual(await readAll(node, 4096, 4096), new Uint8Array(4096), "zeroed cluster");
    await node.pdiscard(3 * 4096, 2 * 4096);
    assertBytesEqual(await readAll(node, 3 * 4096, 8192), new Uint8Array(8192), "discarded");
    // The discarded clusters are reused by the next allocation.
    await node.write(20 * 4096, pattern(2 * 4096, 6));
    assertEquals(img.refcounts.endCluster, used, "no new clusters at the end");
    await node.unref("t");
  }));

Deno.test("qcow2 writes outside the disk fail and leave it usable", () =>
  withGraph(registry, async (graph) => {
    const node = await openOnMemory(graph, params(), {}, "t");
    await assertRejectsWith(node.write(SIZE - 1, new Uint8Array(2)), "ENOSPC", "write past end");
    await node.write(SIZE - 1, new Uint8Array([7]));
    assertBytesEqual(await readAll(node, SIZE - 1, 1), new Uint8Array([7]), "last byte");
    await node.unref("t");
  }));

/** Clusters of the image file with a non-zero refcount. */
async function usedClusters(inst: Qcow2Instance): Promise<number> {
  const rc = inst.image.refcounts;
  let n = 0;
  for (let c = 0; c < rc.endCluster; c++) if ((await rc.get(c)) > 0) n++;
  return n;
}

Deno.test("qcow2 makeEmpty leaves every cluster unallocated, reading from the backing file", () =>
  withGraph(registry, async (graph) => {
    const base = await graph.open({ driver: "memory", "node-name": "base", size: SIZE }, "t");
    await base.write(0, pattern(SIZE, 3));
    const top = await openOnMemory(
      graph,
      params({ clusterSize: 4096 }),
      { backing: "base", discard: "unmap" },
      "t",
    );
    const inst = top.instance as Qcow2Instance;
    await top.write(100, pattern(3 * 4096, 1));
    await top.write(SIZE - 70000, pattern(70000, 2));
    await top.write(2 * 1024 * 1024, pattern(4096, 4), ReqFlags.WRITE_COMPRESSED);
    await top.pwriteZeroes(1024 * 1024, 8192, 0);
    await top.pwriteZeroes(1024 * 1024 + 8192, 8192, ReqFlags.MAY_UNMAP);
    const before = await usedClusters(inst);
    assert((await top.blockStatus(0, 4096)).status & BlockStatusFlags.ALLOCATED, "allocated");
    await inst.makeEmpty();
    assertBytesEqual(await readAll(top, 0, SIZE), pattern(SIZE, 3), "reads the backing file");
    for (let off = 0; off < SIZE;) {
      const st = await top.blockStatus(off, SIZE - off);
      assertEquals(st.status & BlockStatusFlags.ALLOCATED, 0, `nothing allocated at ${off}`);
      off += st.pnum;
    }
    const r = await inst.check("none");
    assertEquals(
      JSON.stringify([r.corruptions, r.leaks, r["allocated-clusters"]]),
      "[0,0,0]",
      "check",
    );
    // Header, refcount table, refcount block and L1 table are all that is left.
    const after = await usedClusters(inst);
    assert(after < before, `clusters in use dropped (${before} -> ${after})`);
    assertEquals(after, 4, "clusters in use after makeEmpty");
    // The top is usable again: a write allocates and copies the rest from the backing file.
    await top.write(4096 + 10, pattern(5, 8));
    const want = pattern(SIZE, 3).slice(4096, 8192);
    want.set(pattern(5, 8), 10);
    assertBytesEqual(await readAll(top, 4096, 4096), want, "write after makeEmpty");
    assertEquals((await inst.check("none")).corruptions, 0, "check after a write");
    await top.unref("t");
    await base.unref("t");
  }));

Deno.test("qcow2 makeEmpty keeps the clusters of internal snapshots", () =>
  withGraph(registry, async (graph) => {
    const top = await openOnMemory(graph, params({ clusterSize: 4096 }), {}, "t");
    const inst = top.instance as Qcow2Instance;
    await top.write(0, pattern(64 * 1024, 5));
    await inst.snapshotCreate("s1");
    await top.write(8192, pattern(4096, 6));
    await top.write(SIZE - 4096, pattern(4096, 7));
    await inst.makeEmpty();
    assertBytesEqual(await readAll(top, 0, SIZE), new Uint8Array(SIZE), "empty without backing");
    let r = await inst.check("none");
    assertEquals(
      JSON.stringify([r.corruptions, r.leaks, r["allocated-clusters"]]),
      "[0,0,0]",
      "check",
    );
    await inst.snapshotApply("s1");
    const want = new Uint8Array(SIZE);
    want.set(pattern(64 * 1024, 5));
    assertBytesEqual(await readAll(top, 0, SIZE), want, "the snapshot's data");
    r = await inst.check("none");
    assertEquals(
      JSON.stringify([r.corruptions, r.leaks]),
      "[0,0]",
      "check after applying the snapshot",
    );
    await top.unref("t");
  }));

Deno.test("qcow2 frees adjacent clusters with one discard of the file", () =>
  withGraph(registry, async (graph) => {
    const mem = await graph.open({ driver: "memory", "node-name": "dd", discard: "unmap" }, "t");
    await formatQcow2(mem, params());
    const top = await graph.open({ driver: "qcow2", file: "dd", discard: "unmap" }, "t");
    const CS = 65536;
    await top.write(0, pattern(32 * CS, 4));
    const inst = mem.instance as { pdiscard(offset: number, bytes: number): Promise<void> };
    const real = inst.pdiscard.bind(inst);
    const seen: string[] = [];
    inst.pdiscard = (offset, bytes) => {
      seen.push(`${offset / CS}+${bytes / CS}`);
      return real(offset, bytes);
    };
    await top.pdiscard(0, 32 * CS);
    assertEquals(seen.length, 1, `discards of the file (cluster+count): ${seen.join(" ")}`);
    assertBytesEqual(await readAll(top, 0, 32 * CS), new Uint8Array(32 * CS), "reads zeros");
    const r = await (top.instance as Qcow2Instance).check("none");
    assertEquals(JSON.stringify([r.corruptions, r.leaks]), "[0,0]", "check");
    await top.unref("t");
    await mem.unref("t");
  }));

Deno.test("qcow2 makeEmpty discards only what it frees, not a snapshot's clusters next to them in the file", () =>
  withGraph(registry, async (graph) => {
    // 64 KiB clusters, so that a discard drops the memory node's chunks; the file passes
    // discards down.
    const mem = await graph.open({ driver: "memory", "node-name": "dm", discard: "unmap" }, "t");
    await formatQcow2(mem, params());
    const top = await graph.open({ driver: "qcow2", file: "dm", discard: "unmap" }, "t");
    const inst = top.instance as Qcow2Instance;
    const CS = 65536;
    const hostOf = async (g: number) => (await inst.image.lookup(g * CS, CS)).host / CS;
    await top.write(0, pattern(12 * CS, 5));
    await top.pdiscard(0, 6 * CS);
    await inst.snapshotCreate("s1");
    // Guest clusters 3-5 get the file's free clusters just before those of the snapshot's
    // 6-11: one run in the file and in the L2 table, refcounts 1 then 2.
    for (let g = 3; g < 6; g++) await top.write(g * CS, pattern(CS, 6 + g));
    const hosts: number[] = [];
    for (const g of [3, 4, 5, 6]) hosts.push(await hostOf(g));
    assertEquals(hosts.map((h) => h - hosts[0]!).join(), "0,1,2,3", "one host run, 3-5 then 6");
    await inst.makeEmpty();
    await inst.snapshotApply("s1");
    const want = new Uint8Array(SIZE);
    want.set(pattern(12 * CS, 5).subarray(6 * CS), 6 * CS);
    assertBytesEqual(await readAll(top, 0, SIZE), want, "the snapshot's data");
    const r = await inst.check("none");
    assertEquals(JSON.stringify([r.corruptions, r.leaks]), "[0,0]", "check");
    await top.unref("t");
    await mem.unref("t");
  }));
