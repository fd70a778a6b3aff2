import { deepStrictEqual as assertEquals, ok as assert } from "node:assert";
import {
  blockStatusAbove,
  blockStatusAboveNow,
  isZeroAbove,
  statusBelow,
} from "./block_status_above.ts";
import { BlockStatusFlags } from "./driver.ts";
import { pattern, testGraph } from "./test_util.ts";

const { ALLOCATED, DATA, EOF, ZERO } = BlockStatusFlags;
const KIB = 1024;

/** base (1 MiB, data at 64 KiB) <- mid (64 KiB, data at 8 KiB) <- top (1 MiB, data at 0). */
async function chain() {
  const g = testGraph();
  const base = await g.open({ driver: "ram", "node-name": "base" }, "t");
  await base.write(64 * KIB, pattern(4 * KIB, 7));
  const mid = await g.open({
    driver: "overlay",
    "node-name": "mid",
    size: 64 * KIB,
    file: { driver: "ram" },
    backing: "base",
  }, "t");
  await mid.write(8 * KIB, pattern(4 * KIB, 2));
  const top = await g.open({
    driver: "overlay",
    "node-name": "top",
    file: { driver: "ram" },
    backing: "mid",
  }, "t");
  await top.write(0, pattern(4 * KIB, 1));
  const close = async () => {
    for (const n of [top, mid, base]) await n.unref("t");
    await g.closeAll();
  };
  return { g, base, mid, top, close };
}

Deno.test("blockStatusAbove answers from the first layer that holds the range, with its depth", async () => {
  const { base, mid, top, close } = await chain();
  const held = await blockStatusAbove(top, null, 0, 64 * KIB);
  assertEquals([held.status & (DATA | ALLOCATED), held.pnum, held.depth], [
    DATA | ALLOCATED,
    4096,
    0,
  ]);
  assert(held.node === top);
  // 4-8 KiB: neither top nor mid holds it; base (a protocol) holds everything.
  const low = await blockStatusAbove(top, null, 4 * KIB, 4 * KIB);
  assertEquals([low.status & (DATA | ALLOCATED), low.pnum, low.depth], [DATA | ALLOCATED, 4096, 2]);
  assert(low.node === base);
  const inMid = await blockStatusAbove(top, null, 8 * KIB, 64 * KIB);
  assertEquals([inMid.pnum, inMid.depth], [4096, 1]);
  assert(inMid.node === mid);
  // Past mid's end its zeros show, and base's data at 64 KiB does not.
  const past = await blockStatusAbove(top, null, 64 * KIB, 8 * KIB);
  assertEquals([past.status, past.pnum, past.depth], [ZERO | ALLOCATED, 8192, 1]);
  assert(past.node === mid);
  await close();
});

Deno.test("blockStatusAbove stops above base, and says EOF only where the top ends", async () => {
  const { mid, top, close } = await chain();
  const above = await blockStatusAbove(top, mid, 4 * KIB, 8 * KIB);
  assertEquals([above.status & (DATA | ZERO | ALLOCATED), above.pnum, above.depth], [0, 8192, 0]);
  // mid's last bytes are base's data, but the top goes on: no EOF.
  const midEnd = await blockStatusAbove(top, null, 60 * KIB, 4 * KIB);
  assertEquals(midEnd.status & EOF, 0, "mid's end is not the chain's");
  const topEnd = await blockStatusAbove(top, null, (1 << 20) - 4 * KIB, 4 * KIB);
  assertEquals(topEnd.status & (EOF | ZERO | ALLOCATED), EOF | ZERO | ALLOCATED);
  assertEquals(topEnd.depth, 1, "zeros past mid's end");
  await close();
});

Deno.test("blockStatusAboveNow answers at once when every layer does, and statusBelow continues a top's answer", async () => {
  const { top, close } = await chain();
  for (const offset of [0, 4 * KIB, 8 * KIB, 64 * KIB]) {
    const now = blockStatusAboveNow(top, null, offset, 16 * KIB);
    assert(!(now instanceof Promise), `${offset}: at once`);
    assertEquals(now, await blockStatusAbove(top, null, offset, 16 * KIB));
    const own = top.blockStatusNow(offset, 16 * KIB);
    assert(!(own instanceof Promise));
    assertEquals(statusBelow(top, null, offset, own), now);
  }
  // A filter on top passes its child's answer through; the walk goes on below the child.
  const f = await top.graph.open({ driver: "pass", "node-name": "f", file: "top" }, "t");
  const through = await blockStatusAbove(f, null, 4 * KIB, 4 * KIB);
  assertEquals([through.status & (DATA | ALLOCATED), through.depth], [DATA | ALLOCATED, 3]);
  await f.unref("t");
  await close();
});

Deno.test("isZeroAbove sees zeros only where every layer a reader reaches says so, clamped to the top", async () => {
  const { top, close } = await chain();
  assertEquals(await isZeroAbove(top, 64 * KIB, 64 * KIB), true, "past mid's end");
  assertEquals(await isZeroAbove(top, 4 * KIB, 4 * KIB), false, "base's data below two layers");
  assertEquals(await isZeroAbove(top, 60 * KIB, 8 * KIB), false, "a run that starts in data");
  assertEquals(await isZeroAbove(top, (1 << 20) - 4 * KIB, 64 * KIB), true, "clamped at the end");
  assertEquals(await isZeroAbove(top, 64 * KIB, 0), true, "nothing to check");
  await close();
});
