import { deepStrictEqual as assertEquals, ok as assert } from "node:assert";
import { type BitmapArea, HBitmap } from "./bitmap.ts";
import { createDirtyBitmap, defaultBitmapGranularity, type DirtyBitmap } from "./dirty_bitmap.ts";
import { ReqFlags } from "./driver.ts";
import { BlockError, type ErrorCode } from "./errors.ts";
import type { Graph } from "./graph.ts";
import type { Node } from "./node.ts";
import { assertRejects, assertThrows, pattern, ramLogs, testGraph } from "./test_util.ts";

async function ramNode(g: Graph, name: string, opts: Record<string, unknown> = {}): Promise<Node> {
  return await g.open({ driver: "ram", "node-name": name, size: 1 << 20, ...opts }, "t");
}

/** Asserts a BlockError with `code` whose message includes `text`. */
function throwsBlock(fn: () => unknown, code: ErrorCode, text: string): void {
  assertEquals(assertThrows(fn, BlockError, text).code, code);
}

function areas(bm: DirtyBitmap): BitmapArea[] {
  return [...bm.hbitmap.areas()];
}

Deno.test("DirtyBitmap marks aligned fast-path writes as they complete", async () => {
  const g = testGraph();
  const n = await ramNode(g, "fast", { align: 512, "delay-ms": 1 });
  const bm = createDirtyBitmap(n, 4096, "bm0");
  const fastBefore = n.fastWrites;
  const p = n.write(8192, pattern(4096, 1));
  assertEquals(n.fastWrites, fastBefore + 1);
  assertEquals(bm.count, 0);
  await p;
  assertEquals(areas(bm), [{ offset: 8192, bytes: 4096 }]);
  await n.write(65536 + 512, pattern(512, 2));
  assertEquals(areas(bm), [{ offset: 8192, bytes: 4096 }, { offset: 65536, bytes: 4096 }]);
  assertEquals(bm.count, 8192);
  await n.unref("t");
});

Deno.test("DirtyBitmap marks read-modify-write, split and FUA-emulated writes", async () => {
  const g = testGraph();
  const n = await ramNode(g, "slow", { align: 4096, "max-transfer": 8192 });
  const bm = createDirtyBitmap(n, 512, "bm0");
  await n.write(700, pattern(100, 1));
  assertEquals(areas(bm), [{ offset: 512, bytes: 512 }]);
  bm.clear();
  await n.write(65536, pattern(32768, 2));
  assertEquals(areas(bm), [{ offset: 65536, bytes: 32768 }]);
  bm.clear();
  const log = ramLogs.get("slow")!.ops;
  log.length = 0;
  await n.write(131072, pattern(4096, 3), ReqFlags.FUA);
  assert(log.some((o) => o.op === "flush"), "FUA was emulated with a flush");
  assertEquals(areas(bm), [{ offset: 131072, bytes: 4096 }]);
  await n.unref("t");
});

Deno.test("DirtyBitmap marks write-zeroes, detect-zeroes and discards", async () => {
  const g = testGraph();
  const n = await ramNode(g, "z", { align: 512, discard: "unmap", "detect-zeroes": "on" });
  const discarded: number[][] = [];
  n.instance!.pdiscard = (o, b) => {
    discarded.push([o, b]);
    return Promise.resolve();
  };
  const bm = createDirtyBitmap(n, 1024, "bm0");
  await n.pwriteZeroes(3000, 2000);
  assertEquals(areas(bm), [{ offset: 2048, bytes: 3072 }]);
  bm.clear();
  await n.write(10240, new Uint8Array(1024));
  assertEquals(areas(bm), [{ offset: 10240, bytes: 1024 }]);
  bm.clear();
  // Only the aligned middle is discarded, and only it is marked.
  await n.pdiscard(20000, 5000);
  assertEquals(discarded, [[20480, 4096]]);
  assertEquals(areas(bm), [{ offset: 20480, bytes: 4096 }]);
  await n.unref("t");
});

Deno.test("DirtyBitmap: discard=ignore changes nothing and marks nothing", async () => {
  const g = testGraph();
  const n = await ramNode(g, "ign", { align: 512 });
  n.instance!.pdiscard = () => Promise.resolve();
  const bm = createDirtyBitmap(n, 512, "bm0");
  await n.pdiscard(0, 65536);
  assertEquals(bm.count, 0);
  await n.unref("t");
});

Deno.test("DirtyBitmap marks failed writes too: the data may have changed", async () => {
  const g = testGraph();
  const n = await ramNode(g, "bad", { align: 512, "fail-writes": "EIO" });
  const bm = createDirtyBitmap(n, 512, "bm0");
  assertEquals((await assertRejects(() => n.write(0, pattern(512, 1)), BlockError)).code, "EIO");
  await assertRejects(() => n.write(1000, pattern(10, 1)), BlockError);
  assertEquals(areas(bm), [{ offset: 0, bytes: 1024 }]);
  assertEquals(n.inFlight, 0);
  await n.unref("t");
});

Deno.test("DirtyBitmap: disabled bitmaps do not mark; enabled ones beside them do", async () => {
  const g = testGraph();
  const n = await ramNode(g, "dis", { align: 512 });
  const on = createDirtyBitmap(n, 512, "on");
  const off = createDirtyBitmap(n, 512, "off");
  off.disabled = true;
  await n.write(0, pattern(512, 1));
  await n.pwriteZeroes(4096, 512);
  assertEquals(off.count, 0);
  assertEquals(on.count, 1024);
  off.disabled = false;
  await n.write(8192, pattern(512, 1));
  assertEquals(areas(off), [{ offset: 8192, bytes: 512 }]);
  off.release();
  await n.write(16384, pattern(512, 1));
  assertEquals(off.count, 512);
  assertEquals(n.dirtyBitmaps, [on]);
  await n.unref("t");
});

Deno.test("DirtyBitmap follows truncate: shrink drops bits, growth is marked dirty", async () => {
  const g = testGraph();
  const n = await ramNode(g, "tr", { size: 65536 });
  const bm = createDirtyBitmap(n, 4096, "bm0");
  const off = createDirtyBitmap(n, 4096, "off");
  off.disabled = true;
  await n.write(60000, pattern(100, 1));
  await n.truncate(32768);
  assertEquals([bm.size, off.size, bm.count], [32768, 32768, 0]);
  await n.truncate(40000);
  assertEquals(areas(bm), [{ offset: 32768, bytes: 40000 - 32768 }]);
  assertEquals([off.size, off.count], [40000, 0]);
  // A protocol that grows on a write past its end grows the bitmaps with it.
  await n.write(50000, pattern(1000, 1));
  assertEquals(bm.size, 51000);
  assertEquals(areas(bm), [{ offset: 32768, bytes: 51000 - 32768 }]);
  assertEquals(off.size, 51000);
  await n.unref("t");
});

Deno.test("createDirtyBitmap checks names and granularity with QEMU's messages", async () => {
  const g = testGraph();
  const n = await ramNode(g, "names");
  createDirtyBitmap(n, 65536, "bm0");
  throwsBlock(() => createDirtyBitmap(n, 65536, "bm0"), "EEXIST", "Bitmap already exists: bm0");
  throwsBlock(() => createDirtyBitmap(n, 256, "x"), "EINVAL", "Granularity must be power of 2");
  throwsBlock(() => createDirtyBitmap(n, 3072, "x"), "EINVAL", "Granularity must be power of 2");
  throwsBlock(() => createDirtyBitmap(n, 512, "a".repeat(1024)), "EINVAL", "name too long");
  createDirtyBitmap(n, 512, null);
  createDirtyBitmap(n, 512, null);
  assertEquals(n.dirtyBitmaps.length, 3);
  await n.unref("t");
});

Deno.test("defaultBitmapGranularity is the cluster size clamped to [4 KiB, 64 KiB]", async () => {
  const g = testGraph();
  const n = await ramNode(g, "gran");
  assertEquals(defaultBitmapGranularity(n), 65536);
  const inst = n.instance as unknown as { clusterSize: number };
  for (const [cs, want] of [[512, 4096], [16384, 16384], [2 << 20, 65536]]) {
    inst.clusterSize = cs!;
    assertEquals(defaultBitmapGranularity(n), want);
  }
  await n.unref("t");
});

Deno.test("DirtyBitmap successor: abdicate hands over the name, reclaim merges back", async () => {
  const g = testGraph();
  const n = await ramNode(g, "succ", { align: 512 });
  const bm = createDirtyBitmap(n, 512, "bm0");
  bm.persistent = true;
  await n.write(0, pattern(512, 1));
  const s = bm.createSuccessor();
  assert(bm.busy && bm.disabled && bm.recording);
  throwsBlock(() => bm.createSuccessor(), "EBUSY", "in-use by an operation");
  await n.write(4096, pattern(512, 1));
  assertEquals([bm.count, s.count], [512, 512]);
  const back = bm.reclaim();
  assertEquals(back, bm);
  assert(!bm.busy && !bm.disabled && !s.attached);
  assertEquals(areas(bm), [{ offset: 0, bytes: 512 }, { offset: 4096, bytes: 512 }]);
  const s2 = bm.createSuccessor();
  await n.write(8192, pattern(512, 1));
  const heir = bm.abdicate();
  assertEquals(heir, s2);
  assertEquals([heir.name, heir.persistent, bm.attached], ["bm0", true, false]);
  assertEquals(areas(heir), [{ offset: 8192, bytes: 512 }]);
  throwsBlock(() => heir.abdicate(), "EINVAL", "no successor present");
  await n.unref("t");
});

Deno.test("DirtyBitmap.info has query-block's fields", async () => {
  const g = testGraph();
  const n = await ramNode(g, "info");
  const bm = createDirtyBitmap(n, 65536, "bm0");
  await n.write(0, pattern(1, 1));
  assertEquals(bm.info(), {
    count: 65536,
    granularity: 65536,
    recording: true,
    busy: false,
    persistent: false,
    name: "bm0",
  });
  bm.inconsistent = true;
  assertEquals(bm.info().inconsistent, true);
  await n.unref("t");
});

Deno.test("DirtyBitmap on a 1 TiB node at 64 KiB is cheap to add and to mark", async () => {
  const g = testGraph();
  const n = await ramNode(g, "big", { size: 1 << 20 });
  // A bitmap covers the node's length: make a 1 TiB one directly on this node's behalf.
  const t0 = performance.now();
  const hb = new HBitmap(2 ** 40, 65536);
  const ms = performance.now() - t0;
  assert(ms < 200, `1 TiB bitmap took ${ms} ms`);
  const bm = createDirtyBitmap(n, 65536, "bm0");
  bm.hbitmap = hb;
  await n.write(4096, pattern(4096, 1));
  assertEquals(hb.nextDirtyArea(0), { offset: 0, bytes: 65536 });
  await n.unref("t");
});
