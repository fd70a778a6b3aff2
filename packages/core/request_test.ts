import { deepStrictEqual as assertEquals, ok as assert } from "node:assert";
import { BlockStatusFlags, ReqFlags } from "./driver.ts";
import { BlockError } from "./errors.ts";
import { IoVector } from "./io_vector.ts";
import { isAllocatedAbove } from "./block_status_above.ts";
import { assertRejects, pattern, ramLogs, testGraph } from "./test_util.ts";

Deno.test("request layer: unaligned writes become aligned read-modify-write", async () => {
  const g = testGraph();
  const n = await g.open({ driver: "ram", "node-name": "a512", align: 512, size: 8192 }, "t");
  await n.write(0, pattern(8192, 0xaa));
  ramLogs.get("a512")!.ops.length = 0;
  await n.write(700, pattern(100, 0x11));
  const ops = ramLogs.get("a512")!.ops;
  assertEquals(ops.map((o) => [o.op, o.offset, o.bytes]), [["read", 512, 512], [
    "write",
    512,
    512,
  ]]);
  const back = new Uint8Array(8192);
  await n.read(0, back);
  const want = pattern(8192, 0xaa);
  want.fill(0x11, 700, 800);
  assertEquals(back, want);
  // A write spanning blocks reads only the head and tail blocks.
  ops.length = 0;
  await n.write(1000, pattern(2000, 0x22));
  assertEquals(ops.map((o) => [o.op, o.offset, o.bytes]), [
    ["read", 512, 512],
    ["read", 2560, 512],
    ["write", 512, 2560],
  ]);
  want.fill(0x22, 1000, 3000);
  await n.read(0, back);
  assertEquals(back, want);
  // Unaligned reads go through a bounce buffer.
  const small = new Uint8Array(3);
  await n.read(999, small);
  assertEquals([...small], [0xaa, 0x22, 0x22]);
  await n.unref("t");
  await g.closeAll();
});

Deno.test("request layer: concurrent unaligned writes to one block are serialised", async () => {
  const g = testGraph();
  const n = await g.open({
    driver: "ram",
    "node-name": "rmw",
    align: 4096,
    size: 8192,
    "delay-ms": 2,
  }, "t");
  const writes: Promise<void>[] = [];
  for (let i = 0; i < 16; i++) writes.push(n.write(i * 100, pattern(100, i + 1)));
  await Promise.all(writes);
  const back = new Uint8Array(1600);
  await n.read(0, back);
  for (let i = 0; i < 16; i++) assertEquals(back[i * 100], i + 1, `write ${i} survived`);
  await n.unref("t");
  await g.closeAll();
});

Deno.test("request layer: requests are split at max transfer", async () => {
  const g = testGraph();
  const n = await g.open(
    { driver: "ram", "node-name": "mt", "max-transfer": 4096, size: 65536 },
    "t",
  );
  await n.write(0, pattern(10000, 3));
  const ops = ramLogs.get("mt")!.ops;
  assertEquals(ops.map((o) => o.bytes), [4096, 4096, 1808]);
  ops.length = 0;
  const back = new Uint8Array(10000);
  await n.read(0, back);
  assertEquals(ops.map((o) => o.bytes), [4096, 4096, 1808]);
  assertEquals(back, pattern(10000, 3));
  await n.unref("t");
  await g.closeAll();
});

Deno.test("request layer: reads past the end of a node return zeros", async () => {
  const g = testGraph();
  const n = await g.open({ driver: "ram", size: 1000 }, "t");
  await n.write(0, pattern(1000, 9));
  const back = new Uint8Array(100).fill(0xff);
  await n.read(950, back);
  assertEquals([...back.subarray(0, 50)], [...pattern(50, 9)]);
  assertEquals([...back.subarray(50)], [...pattern(50, 0)]);
  await n.unref("t");
  await g.closeAll();
});

Deno.test("request layer: detect-zeroes turns zero writes into write-zeroes, with unmap only when allowed", async () => {
  const g = testGraph();
  const n = await g.open({
    driver: "ram",
    "node-name": "dz",
    "detect-zeroes": "unmap",
    discard: "unmap",
  }, "t");
  await n.write(0, new Uint8Array(4096));
  const ops = ramLogs.get("dz")!.ops;
  assertEquals(ops.at(-1)!.op, "zeroes");
  assert(ops.at(-1)!.flags & ReqFlags.MAY_UNMAP);
  await n.write(0, pattern(4096, 1));
  assertEquals(ops.at(-1)!.op, "write");
  const on = await g.open({ driver: "ram", "node-name": "dzon", "detect-zeroes": "on" }, "t");
  await on.write(0, new Uint8Array(4096));
  const last = ramLogs.get("dzon")!.ops.at(-1)!;
  assertEquals(last.op, "zeroes");
  assertEquals(last.flags & ReqFlags.MAY_UNMAP, 0);
  await assertRejects(
    () => g.open({ driver: "ram", "detect-zeroes": "unmap" }),
    BlockError,
    "setting detect-zeroes to unmap is not allowed without setting discard operation to unmap",
  );
  await n.unref("t");
  await on.unref("t");
  await g.closeAll();
});

Deno.test("request layer: FUA is emulated with a flush when the driver lacks it", async () => {
  const g = testGraph();
  const n = await g.open({ driver: "ram", "node-name": "nofua" }, "t");
  await n.write(0, pattern(512, 1), ReqFlags.FUA);
  assertEquals(ramLogs.get("nofua")!.ops.map((o) => o.op), ["write", "flush"]);
  const f = await g.open({ driver: "ram", "node-name": "fua", fua: true }, "t");
  await f.write(0, pattern(512, 1), ReqFlags.FUA);
  assertEquals(ramLogs.get("fua")!.ops.map((o) => [o.op, o.flags & ReqFlags.FUA]), [[
    "write",
    ReqFlags.FUA,
  ]]);
  await n.unref("t");
  await f.unref("t");
  await g.closeAll();
});

Deno.test("request layer: flush is skipped when nothing was written since the last one", async () => {
  const g = testGraph();
  const n = await g.open({ driver: "ram", "node-name": "fl" }, "t");
  await n.flush();
  await n.write(0, pattern(512, 1));
  await n.flush();
  await n.flush();
  assertEquals(ramLogs.get("fl")!.ops.filter((o) => o.op === "flush").length, 1);
  await n.unref("t");
  await g.closeAll();
});

Deno.test("request layer: write-zeroes falls back to writing zeros, and NO_FALLBACK refuses", async () => {
  const g = testGraph();
  const n = await g.open({ driver: "ram", "node-name": "nz", zeroes: false, align: 512 }, "t");
  await n.write(0, pattern(4096, 5));
  await n.pwriteZeroes(100, 1000);
  const back = new Uint8Array(4096);
  await n.read(0, back);
  const want = pattern(4096, 5);
  want.fill(0, 100, 1100);
  assertEquals(back, want);
  const err = await assertRejects(() => n.pwriteZeroes(0, 512, ReqFlags.NO_FALLBACK), BlockError);
  assertEquals(err.code, "ENOTSUP");
  await n.unref("t");
  await g.closeAll();
});

Deno.test("request layer: vectored requests use the caller's segments", async () => {
  const g = testGraph();
  const n = await g.open({ driver: "ram", align: 512 }, "t");
  const q = new IoVector([pattern(100, 1), pattern(412, 2), pattern(512, 3)]);
  await n.pwritev(512, 1024, q, 0);
  const out = new IoVector([new Uint8Array(3), new Uint8Array(922)]);
  await n.preadv(611, 925, out, 0);
  assertEquals(out.iov[0]![0], 1);
  assertEquals(out.iov[0]![1], 2);
  assertEquals(out.iov[1]![921], 3);
  await n.unref("t");
  await g.closeAll();
});

Deno.test("block status: protocols report data; formats without allocation defer to backing", async () => {
  const g = testGraph();
  const base = await g.open({ driver: "ram", "node-name": "base" }, "t");
  const top = await g.open({
    driver: "overlay",
    "node-name": "top",
    file: { driver: "ram" },
    backing: "base",
  }, "t");
  const st = await base.blockStatus(0, 1 << 20);
  assertEquals(
    st.status & (BlockStatusFlags.DATA | BlockStatusFlags.ALLOCATED | BlockStatusFlags.EOF),
    BlockStatusFlags.DATA | BlockStatusFlags.ALLOCATED | BlockStatusFlags.EOF,
  );
  await top.write(8192, pattern(100, 1));
  const a = await isAllocatedAbove(top, base, 0, 16384);
  assertEquals(a, { allocated: false, pnum: 8192, depth: 0 });
  const b = await isAllocatedAbove(top, base, 8192, 16384);
  assertEquals(b.allocated, true);
  assertEquals(b.pnum, 4096);
  const back = new Uint8Array(200);
  await base.write(8292, pattern(100, 7));
  await top.read(8192, back);
  assertEquals(back[0], 1);
  assertEquals(back[150], 0, "copy-on-write copied the block before base changed");
  await top.unref("t");
  await base.unref("t");
  await g.closeAll();
});

Deno.test("flush covers only writes that completed before it: a later flush is never skipped", async () => {
  const g = testGraph();
  const n = await g.open({ driver: "ram", "node-name": "slowflush", "delay-ms": 30 }, "t");
  const log = ramLogs.get("slowflush")!.ops;
  const w = n.write(0, pattern(512, 1));
  // ram's flush also waits 30 ms; start it while the write is still in the driver.
  await n.flush();
  await w;
  const mark = log.length;
  await n.flush();
  assert(
    log.slice(mark).some((o) => o.op === "flush"),
    "the write completed after the first flush, so the second must reach the driver",
  );
  await n.unref("t");
  await g.closeAll();
});

Deno.test("emulated FUA flushes even when another flush ran while the write was in flight", async () => {
  const g = testGraph();
  const n = await g.open({ driver: "ram", "node-name": "fuarace", "delay-ms": 20 }, "t");
  const log = ramLogs.get("fuarace")!.ops;
  const w = n.write(0, pattern(512, 1), ReqFlags.FUA);
  await n.flush();
  await w;
  const afterWrite = log.findIndex((o) => o.op === "write");
  assert(log.slice(afterWrite + 1).some((o) => o.op === "flush"), JSON.stringify(log));
  await n.unref("t");
  await g.closeAll();
});

Deno.test("request layer: the I/O vector range is checked before any I/O", async () => {
  const g = testGraph();
  const n = await g.open({ driver: "ram", "node-name": "qv" }, "t");
  const q = IoVector.of(pattern(512, 1));
  for (const [qo, len] of [[-5, 512], [Number.NaN, 512], [0, 4096], [1, 512]]) {
    const e = await assertRejects(
      () => n.pwritev(0, len!, q, qo!),
      BlockError,
      "Invalid I/O vector",
    );
    assertEquals(e.code, "EINVAL");
    await assertRejects(() => n.preadv(0, len!, q, qo!), BlockError, "Invalid I/O vector");
  }
  assertEquals(ramLogs.get("qv")!.ops.length, 0, "nothing reached the driver");
  await n.unref("t");
  await g.closeAll();
});

Deno.test("request layer: a driver that throws synchronously still yields a rejected promise", async () => {
  const g = testGraph();
  const n = await g.open({ driver: "ram" }, "t");
  const inst = n.instance!;
  const orig = inst.preadv;
  inst.preadv = () => {
    throw new BlockError("EIO", "boom");
  };
  const p = n.read(0, new Uint8Array(512));
  assert(p instanceof Promise);
  await assertRejects(() => p, BlockError, "boom");
  assertEquals(n.inFlight, 0);
  inst.preadv = orig;
  await n.unref("t");
  await g.closeAll();
});

Deno.test("block status: unallocated ranges are ZERO without ALLOCATED; short layers stop the chain", async () => {
  const g = testGraph();
  const solo = await g.open({ driver: "overlay", file: { driver: "ram" } }, "t");
  for (const wantZero of [true, false]) {
    const st = await solo.blockStatus(0, 4096, wantZero);
    assertEquals(
      st.status & (BlockStatusFlags.ZERO | BlockStatusFlags.ALLOCATED),
      BlockStatusFlags.ZERO,
    );
  }
  const base = await g.open({ driver: "ram", "node-name": "bigbase", size: 1 << 20 }, "t");
  await base.write(65536, pattern(4096, 7));
  const mid = await g.open({
    driver: "overlay",
    "node-name": "mid",
    size: 65536,
    file: { driver: "ram" },
    backing: "bigbase",
  }, "t");
  const top = await g.open({
    driver: "overlay",
    "node-name": "top2",
    file: { driver: "ram" },
    backing: "mid",
  }, "t");
  const back = new Uint8Array(1);
  await top.read(65536, back);
  assertEquals(back[0], 0, "the guest sees zeros past the short middle layer");
  const a = await isAllocatedAbove(top, base, 65536, 4096);
  assert(a.allocated, "the zeros past mid's end belong to mid, not to base");
  assertEquals(a.depth, 2);
  for (const x of [solo, top, mid, base]) await x.unref("t");
  await g.closeAll();
});

Deno.test("block status is in flight: a drained section waits for it", async () => {
  const g = testGraph();
  const n = await g.open({ driver: "ram" }, "t");
  const inst = n.instance!;
  let running = false;
  inst.blockStatus = async (_w, offset, bytes) => {
    running = true;
    await new Promise((r) => setTimeout(r, 20));
    running = false;
    return { status: BlockStatusFlags.DATA, pnum: bytes, map: offset };
  };
  const p = n.blockStatus(0, 512);
  await g.drained([n], () => assert(!running, "drain began while block status ran"));
  await p;
  await n.unref("t");
  await g.closeAll();
});

Deno.test("request layer: discard drops unaligned heads and tails, but not a tail that ends the disk", async () => {
  const g = testGraph();
  const n = await g.open({
    driver: "ram",
    "node-name": "dtail",
    size: 10 * 4096 + 1536,
    "discard-align": 4096,
    discard: "unmap",
  }, "t");
  const ops = ramLogs.get("dtail")!.ops;
  await n.pdiscard(1000, 3 * 4096);
  await n.pdiscard(8 * 4096 - 100, 2 * 4096 + 1636);
  await n.pdiscard(10 * 4096, 1536);
  assertEquals(ops.filter((o) => o.op === "discard").map((o) => [o.offset, o.bytes]), [
    [4096, 2 * 4096],
    [8 * 4096, 2 * 4096 + 1536],
    [10 * 4096, 1536],
  ]);
  await n.unref("t");
  await g.closeAll();
});
