import { deepStrictEqual as assertEquals, ok as assert } from "node:assert";
import { BlockStatusFlags } from "./driver.ts";
import { BlockError } from "./errors.ts";
import { pattern, testGraph } from "./test_util.ts";

Deno.test("blockStatusNow answers at once through filters and RAW answers, as blockStatus does", async () => {
  const g = testGraph();
  const top = await g.open({
    driver: "pass",
    "node-name": "p",
    file: { driver: "overlay", "node-name": "o", file: { driver: "ram" } },
  }, "t");
  await top.write(8192, pattern(4096, 1));
  for (const [offset, bytes] of [[0, 65536], [8192, 65536], [12288, 4096], [1048575, 1]]) {
    const now = top.blockStatusNow(offset!, bytes!);
    assert(!(now instanceof Promise), `${offset}+${bytes}: answered at once`);
    assertEquals(now, await top.blockStatus(offset!, bytes!), `${offset}+${bytes}`);
  }
  assertEquals(top.inFlight, 0, "nothing left in flight");
  await top.unref("t");
  await g.closeAll();
});

Deno.test("blockStatusNow gives a driver's promise back, counted in flight, and throws range errors at once", async () => {
  const g = testGraph();
  const n = await g.open({ driver: "ram", "node-name": "r" }, "t");
  n.instance!.blockStatus = (_w, offset, bytes) =>
    new Promise((r) =>
      setTimeout(() => r({ status: BlockStatusFlags.DATA, pnum: bytes, map: offset }), 5)
    );
  const p = n.blockStatusNow(0, 512);
  assert(p instanceof Promise, "a promise");
  assertEquals(n.inFlight, 1, "in flight while it runs");
  const st = await p;
  assertEquals(st.status & BlockStatusFlags.ALLOCATED, BlockStatusFlags.ALLOCATED);
  assertEquals(n.inFlight, 0, "settled");
  let thrown: unknown = null;
  try {
    n.blockStatusNow(-1, 512);
  } catch (e) {
    thrown = e;
  }
  assert(thrown instanceof BlockError, `a negative offset throws at once: ${thrown}`);
  await n.unref("t");
  await g.closeAll();
});
