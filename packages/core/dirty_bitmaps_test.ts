import { deepStrictEqual as assertEquals, ok as assert } from "node:assert";
import { DirtyBitmaps } from "./dirty_bitmaps.ts";
import { findDirtyBitmap } from "./dirty_bitmap.ts";
import { BlockError, type ErrorCode } from "./errors.ts";
import type { Graph } from "./graph.ts";
import type { Node } from "./node.ts";
import { assertThrows, pattern, testGraph } from "./test_util.ts";
import { Transaction } from "./transaction.ts";

function throwsBlock(fn: () => unknown, code: ErrorCode, text: string): void {
  assertEquals(assertThrows(fn, BlockError, text).code, code);
}

async function setup(): Promise<{ g: Graph; a: Node; b: Node; bms: DirtyBitmaps }> {
  const g = testGraph();
  const a = await g.open({ driver: "ram", "node-name": "a", size: 1 << 20, align: 512 }, "t");
  const b = await g.open({ driver: "ram", "node-name": "b", size: 1 << 20, align: 512 }, "t");
  return { g, a, b, bms: new DirtyBitmaps(g) };
}

async function teardown(a: Node, b: Node): Promise<void> {
  await a.unref("t");
  await b.unref("t");
}

Deno.test("DirtyBitmaps.add validates like block-dirty-bitmap-add", async () => {
  const { a, b, bms } = await setup();
  const bm = bms.add({ node: "a", name: "bm0" });
  assertEquals([bm.granularity, bm.enabled, bm.persistent, bm.size], [65536, true, false, 1 << 20]);
  const off = bms.add({ node: "a", name: "bm1", granularity: 512, disabled: true });
  assertEquals([off.granularity, off.enabled], [512, false]);
  throwsBlock(() => bms.add({ node: "a", name: "bm0" }), "EEXIST", "Bitmap already exists: bm0");
  throwsBlock(() => bms.add({ node: "a", name: "" }), "EINVAL", "Bitmap name cannot be empty");
  throwsBlock(
    () => bms.add({ node: "zz", name: "x" }),
    "ENODEV",
    "Cannot find device='zz' nor node-name='zz'",
  );
  throwsBlock(
    () => bms.add({ node: "a", name: "x", granularity: 1000 }),
    "EINVAL",
    "Granularity must be power of 2 and at least 512",
  );
  throwsBlock(
    () => bms.add({ node: "a", name: "x", persistent: true }),
    "ENOTSUP",
    "Can't store persistent bitmaps to a: Operation not supported",
  );
  // A driver that stores bitmaps is asked first.
  const asked: [string, number][] = [];
  Object.assign(a.instance!, {
    canStoreDirtyBitmap: (n: string, gr: number) => void asked.push([n, gr]),
  });
  assert(bms.add({ node: "a", name: "p", persistent: true }).persistent);
  assertEquals(asked, [["p", 65536]]);
  assertEquals(bms.query(a).map((i) => i.name), ["bm0", "bm1", "p"]);
  assertEquals(bms.query(b), []);
  await teardown(a, b);
});

Deno.test("DirtyBitmaps refuse busy, readonly and inconsistent bitmaps with QEMU's messages", async () => {
  const { a, b, bms } = await setup();
  const bm = bms.add({ node: "a", name: "bm0" });
  const ref = { node: "a", name: "bm0" };
  bm.busy = true;
  const busy = "Bitmap 'bm0' is currently in use by another operation and cannot be used";
  throwsBlock(() => bms.clear(ref), "EBUSY", busy);
  throwsBlock(() => bms.remove(ref), "EBUSY", busy);
  throwsBlock(() => bms.disable(ref), "EBUSY", busy);
  bm.busy = false;
  bm.readonly = true;
  throwsBlock(() => bms.clear(ref), "EPERM", "Bitmap 'bm0' is readonly and cannot be modified");
  bms.disable(ref);
  assert(bm.disabled);
  bm.readonly = false;
  bm.inconsistent = true;
  throwsBlock(() => bms.enable(ref), "EINVAL", "Bitmap 'bm0' is inconsistent and cannot be used");
  bms.remove(ref);
  assertEquals(a.dirtyBitmaps, []);
  throwsBlock(() => bms.clear(ref), "ENOENT", "Dirty bitmap 'bm0' not found");
  throwsBlock(() => bms.clear({ node: "q", name: "x" }), "ENODEV", "Node 'q' not found");
  await teardown(a, b);
});

Deno.test("DirtyBitmaps.remove of a persistent bitmap tells the image", async () => {
  const { a, b, bms } = await setup();
  const removed: string[] = [];
  Object.assign(a.instance!, {
    canStoreDirtyBitmap: () => {},
    dirtyBitmapRemoved: (n: string) => void removed.push(n),
  });
  bms.add({ node: "a", name: "p", persistent: true });
  bms.add({ node: "a", name: "q" });
  bms.remove({ node: "a", name: "q" });
  bms.remove({ node: "a", name: "p" });
  assertEquals(removed, ["p"]);
  await teardown(a, b);
});

Deno.test("DirtyBitmaps.merge ORs local and cross-node sources into the target", async () => {
  const { a, b, bms } = await setup();
  const t = bms.add({ node: "a", name: "t", granularity: 4096 });
  const l = bms.add({ node: "a", name: "l", granularity: 512 });
  const r = bms.add({ node: "b", name: "r", granularity: 65536 });
  t.disabled = true;
  await a.write(0, pattern(512, 1));
  await b.write(131072, pattern(512, 1));
  bms.merge({ node: "a", target: "t", bitmaps: ["l", { node: "b", name: "r" }] });
  assertEquals([...t.hbitmap.areas()], [{ offset: 0, bytes: 4096 }, {
    offset: 131072,
    bytes: 65536,
  }]);
  assertEquals(l.count + r.count, 512 + 65536);
  // A missing source leaves the target as it was.
  const before = t.count;
  throwsBlock(
    () => bms.merge({ node: "a", target: "t", bitmaps: [{ node: "b", name: "r" }, "nope"] }),
    "ENOENT",
    "Dirty bitmap 'nope' not found",
  );
  assertEquals(t.count, before);
  await b.truncate(1 << 19);
  throwsBlock(
    () => bms.merge({ node: "a", target: "t", bitmaps: [{ node: "b", name: "r" }] }),
    "EINVAL",
    "Bitmaps are of different sizes (destination size is 1048576, source size is 524288) " +
      "and can't be merged",
  );
  await teardown(a, b);
});

Deno.test("DirtyBitmaps in a transaction: one failure rolls the whole group back", async () => {
  const { a, b, bms } = await setup();
  const keep = bms.add({ node: "a", name: "keep", granularity: 512 });
  const src = bms.add({ node: "b", name: "src", granularity: 512 });
  const gone = bms.add({ node: "a", name: "gone" });
  await a.write(0, pattern(1024, 1));
  await b.write(65536, pattern(512, 1));
  const before = [...keep.hbitmap.areas()];
  throwsBlock(
    () =>
      Transaction.run((tran) => {
        bms.add({ node: "a", name: "bm1" }, tran);
        bms.clear({ node: "a", name: "keep" }, tran);
        bms.disable({ node: "a", name: "keep" }, tran);
        bms.merge({ node: "a", target: "keep", bitmaps: [{ node: "b", name: "src" }] }, tran);
        bms.remove({ node: "a", name: "gone" }, tran);
        assert(gone.busy, "a removed bitmap is busy until the commit");
        bms.add({ node: "a", name: "bm1" }, tran);
      }),
    "EEXIST",
    "Bitmap already exists: bm1",
  );
  assertEquals(findDirtyBitmap(a, "bm1"), undefined);
  assertEquals([...keep.hbitmap.areas()], before);
  assert(keep.enabled && !gone.busy && gone.attached);
  assertEquals(src.count, 512);
  // The same group without the duplicate commits whole.
  Transaction.run((tran) => {
    bms.add({ node: "a", name: "bm1" }, tran);
    bms.clear({ node: "a", name: "keep" }, tran);
    bms.merge({ node: "a", target: "keep", bitmaps: [{ node: "b", name: "src" }] }, tran);
    bms.remove({ node: "a", name: "gone" }, tran);
  });
  assert(findDirtyBitmap(a, "bm1") && !gone.attached);
  assertEquals([...keep.hbitmap.areas()], [{ offset: 65536, bytes: 512 }]);
  await teardown(a, b);
});

Deno.test("DirtyBitmaps: an aborted clear keeps writes marked after it", async () => {
  const { a, b, bms } = await setup();
  const bm = bms.add({ node: "a", name: "bm0", granularity: 512 });
  await a.write(0, pattern(512, 1));
  const tran = new Transaction();
  bms.clear({ node: "a", name: "bm0" }, tran);
  assertEquals(bm.count, 0);
  await a.write(4096, pattern(512, 1));
  tran.abort();
  assertEquals([...bm.hbitmap.areas()], [{ offset: 0, bytes: 512 }, { offset: 4096, bytes: 512 }]);
  await teardown(a, b);
});

Deno.test("DirtyBitmaps.merge names an unusable target before an unusable source", async () => {
  const { a, b, bms } = await setup();
  const t = bms.add({ node: "a", name: "t" });
  const s = bms.add({ node: "a", name: "s" });
  t.inconsistent = true;
  s.inconsistent = true;
  const e = assertThrows(
    () => bms.merge({ node: "a", target: "t", bitmaps: ["s"] }),
    BlockError,
    "Bitmap 't' is inconsistent and cannot be used",
  );
  // The tools print QEMU's hint after the message; QMP leaves it out.
  assertEquals(e.hint, "Try block-dirty-bitmap-remove to delete this bitmap from disk\n");
  throwsBlock(
    () => bms.merge({ node: "a", target: "t", bitmaps: ["nope"] }),
    "ENOENT",
    "Dirty bitmap 'nope' not found",
  );
  t.inconsistent = false;
  throwsBlock(
    () => bms.merge({ node: "a", target: "t", bitmaps: ["s"] }),
    "EINVAL",
    "Bitmap 's' is inconsistent and cannot be used",
  );
  await teardown(a, b);
});
