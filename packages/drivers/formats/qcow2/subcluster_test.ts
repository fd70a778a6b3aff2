import { BlockStatusFlags, IoVector, type Node, ReqFlags } from "@blockgraph/core";
import { assert, assertBytesEqual, assertEquals, pattern } from "../../conformance/mod.ts";
import type { Qcow2CreateParams } from "./create.ts";
import { getU64, viewOf } from "./format.ts";
import { expectClean, q, qcow2Params, readAll, rejects, withImage } from "./test_fixtures.ts";

const CS = 65536;
const SC = CS / 32;
const SIZE = 2 << 20;

function params(over: Partial<Qcow2CreateParams> = {}): Qcow2CreateParams {
  return qcow2Params({ size: SIZE, clusterSize: CS, extendedL2: true, ...over });
}

interface Fixture {
  mem: Node;
  /** The backing node (a memory disk filled with a pattern), when asked for. */
  base: Node | null;
  open(extra?: Record<string, unknown>): Promise<Node>;
}

/** A fresh extended-L2 image in memory (over a patterned backing disk with `backing`). */
function withExtL2(
  p: Qcow2CreateParams,
  backing: boolean,
  fn: (f: Fixture) => Promise<void>,
): Promise<void> {
  return withImage(p, async ({ graph, mem, open }) => {
    let base: Node | null = null;
    if (backing) {
      base = await graph.open({ driver: "memory", "node-name": "base", size: p.size }, "t");
      await base.write(0, backingData(p.size));
    }
    await fn({
      mem,
      base,
      open: (extra = {}) => open({ ...(backing ? { backing: "base" } : {}), ...extra }),
    });
    await base?.unref("t");
  });
}

/** The backing disk's contents: every 512-byte sector holds its own index's low byte + 1. */
function backingData(size: number): Uint8Array {
  const b = new Uint8Array(size);
  for (let i = 0; i < size; i++) b[i] = ((i >> 9) & 0x7f) + 1;
  return b;
}

/** The L2 table offset of L1 entry 0 and the raw entry words of guest cluster `g` in it. */
async function rawEntry(mem: Node, g: number): Promise<{ l2: number; words: number[] }> {
  const h = await readAll(mem, 0, 104);
  const l1 = await readAll(mem, getU64(viewOf(h), 40), 8);
  const l2 = getU64(viewOf(l1), 0) % 2 ** 56 - (getU64(viewOf(l1), 0) % 512);
  const e = viewOf(await readAll(mem, l2 + g * 16, 16));
  return { l2, words: [0, 4, 8, 12].map((i) => e.getUint32(i)) };
}

Deno.test("qcow2 extended L2: a partial 4 KiB write allocates and writes only its subclusters", () =>
  withExtL2(params(), true, async ({ mem, base, open }) => {
    const node = await open();
    const writes: number[] = [];
    const orig = mem.pwritev.bind(mem);
    mem.pwritev = (offset, bytes, qiov, qiovOffset, flags) => {
      writes.push(bytes);
      return orig(offset, bytes, qiov, qiovOffset, flags);
    };
    // 4 KiB at 9 KiB: subclusters 4..6 (8 KiB..14 KiB), the head and tail copied from the
    // backing file, not the whole 64 KiB cluster.
    await node.write(9 * 1024, pattern(4096, 0xab));
    mem.pwritev = orig;
    assertEquals(
      JSON.stringify(writes),
      JSON.stringify([3 * SC]),
      "one data write of 3 subclusters",
    );
    await q(node).flush();
    const { words } = await rawEntry(mem, 0);
    assertEquals(words[2], 0, "no zero bits");
    assertEquals(words[3], 0b1110000, "allocated bits of subclusters 4..6");
    const want = backingData(SIZE).slice(0, CS);
    want.set(pattern(4096, 0xab), 9 * 1024);
    assertBytesEqual(await readAll(node, 0, CS), want, "cluster 0 reads");
    await expectClean(node, "after the write");
    await node.unref("t");
    assert(base !== null, "backing");
  }));

Deno.test("qcow2 extended L2: reads and block status go per subcluster", () =>
  withExtL2(params(), true, async ({ open }) => {
    const node = await open();
    await node.write(2 * SC, pattern(SC, 1));
    await node.pwriteZeroes(4 * SC, 2 * SC, 0);
    const st = [];
    for (let off = 0; off < CS;) {
      const s = await node.blockStatus(off, CS - off);
      st.push([off / SC, s.pnum / SC, s.status & (BlockStatusFlags.DATA | BlockStatusFlags.ZERO)]);
      off += s.pnum;
    }
    const D = BlockStatusFlags.DATA;
    const Z = BlockStatusFlags.ZERO;
    assertEquals(
      JSON.stringify(st),
      JSON.stringify([[0, 2, 0], [2, 1, D], [3, 1, 0], [4, 2, Z], [6, 26, 0]]),
      "status runs",
    );
    const want = backingData(SIZE).slice(0, CS);
    want.set(pattern(SC, 1), 2 * SC);
    want.fill(0, 4 * SC, 6 * SC);
    assertBytesEqual(await readAll(node, 0, CS), want, "data");
    await expectClean(node, "after");
    await node.unref("t");
  }));

Deno.test("qcow2 extended L2: concurrent writes to one unallocated cluster all land", () =>
  withExtL2(params(), true, async ({ open }) => {
    const node = await open();
    const want = backingData(SIZE);
    const ops: Promise<void>[] = [];
    for (let i = 0; i < 24; i++) {
      // Disjoint ranges (overlapping concurrent writes land in no defined order).
      const off = CS + i * 1500 + (i % 3) * 100;
      const data = pattern(500 + (i % 8) * 100, 10 + i);
      want.set(data, off);
      ops.push(node.write(off, data));
    }
    await Promise.all(ops);
    assertBytesEqual(await readAll(node, 0, 3 * CS), want.slice(0, 3 * CS), "data");
    await expectClean(node, "after");
    const r = await q(node).check("none");
    assertEquals(r["allocated-clusters"], 1, "one cluster");
    await node.unref("t");
  }));

Deno.test("qcow2 extended L2: random writes, zeroes and discards agree with a model", () =>
  withExtL2(params({ clusterSize: 16384 }), true, async ({ open }) => {
    let node = await open({ discard: "unmap" });
    const model = backingData(SIZE);
    let seed = 7;
    const rnd = (n: number) => {
      seed = (seed * 1103515245 + 12345) % 2147483648;
      return seed % n;
    };
    const sc = 16384 / 32;
    for (let i = 0; i < 300; i++) {
      const op = rnd(10);
      if (op < 6) {
        const off = rnd(SIZE - 8192);
        const data = pattern(1 + rnd(8192), 1 + rnd(250));
        await node.write(off, data);
        model.set(data, off);
      } else if (op < 8) {
        const off = rnd(SIZE / sc - 8) * sc;
        const n = (1 + rnd(40)) * sc;
        const len = Math.min(n, SIZE - off);
        await node.pwriteZeroes(off, len, op === 7 ? ReqFlags.MAY_UNMAP : 0);
        model.fill(0, off, off + len);
      } else {
        const off = rnd(SIZE / 16384) * 16384;
        const len = Math.min((1 + rnd(3)) * 16384, SIZE - off);
        await node.pdiscard(off, len);
        model.fill(0, off, off + len);
      }
      if (i % 100 === 99) {
        await node.unref("t");
        node = await open({ discard: "unmap" });
        await expectClean(node, `after ${i + 1} operations`);
      }
    }
    assertBytesEqual(await readAll(node, 0, SIZE), model, "data");
    await node.unref("t");
  }));

Deno.test("qcow2 extended L2: invalid subcluster bitmaps are refused and check reports them", () =>
  withExtL2(params(), false, async ({ mem, open }) => {
    let node = await open();
    await node.write(0, pattern(4096, 1));
    await node.write(CS, pattern(CS, 2));
    await node.unref("t");
    const { l2 } = await rawEntry(mem, 0);
    // Subcluster 0 both allocated and zero; cluster 2 unallocated with an allocated bit.
    await mem.write(l2 + 8, new Uint8Array([0, 0, 0, 1]));
    await mem.write(l2 + 2 * 16 + 12, new Uint8Array([0, 0, 0, 4]));
    node = await open({ "read-only": true });
    const r = await q(node).check("none");
    assertEquals(
      JSON.stringify(r.messages),
      JSON.stringify([
        "ERROR offset=50000: Allocated cluster has corrupted subcluster allocation bitmap",
        "ERROR: Unallocated cluster has non-zero subcluster allocation map",
      ]),
      "check messages",
    );
    assertEquals(r.corruptions, 2, "corruptions");
    await rejects(readAll(node, 0, 512), "EIO", `L2 offset: 0x${l2.toString(16)}, L2 index: 0x0`);
    assertBytesEqual(await readAll(node, CS, 512), pattern(CS, 2).slice(0, 512), "cluster 1");
    await node.unref("t");
    node = await open();
    await rejects(node.write(2 * CS, pattern(512, 3)), "EIO", "L2 index: 0x2");
    await rejects(readAll(node, CS, 512), "EIO", "corrupt");
    await node.unref("t");
  }));

Deno.test("qcow2 extended L2: a compressed cluster with a non-zero bitmap is refused", () =>
  withExtL2(params(), false, async ({ mem, open }) => {
    let node = await open();
    await node.pwritev(0, CS, IoVector.of(pattern(CS, 0)), 0, ReqFlags.WRITE_COMPRESSED);
    assertBytesEqual(await readAll(node, 0, CS), pattern(CS, 0), "compressed reads");
    // A partial write copies the rest of the compressed cluster into a new one.
    await node.write(100, pattern(10, 9));
    const want = pattern(CS, 0);
    want.set(pattern(10, 9), 100);
    assertBytesEqual(await readAll(node, 0, CS), want, "after the partial write");
    await expectClean(node, "after");
    await node.pwritev(CS, CS, IoVector.of(pattern(CS, 0)), 0, ReqFlags.WRITE_COMPRESSED);
    await node.unref("t");
    const { l2 } = await rawEntry(mem, 1);
    await mem.write(l2 + 16 + 12, new Uint8Array([0, 0, 0, 1]));
    node = await open({ "read-only": true });
    const r = await q(node).check("none");
    assert(
      r.messages[0]!.startsWith(
        "ERROR compressed cluster 1 with non-zero subcluster allocation bitmap",
      ),
      r.messages[0]!,
    );
    await rejects(readAll(node, CS, 512), "EIO", "L2 index: 0x1");
    await node.unref("t");
  }));

Deno.test("qcow2 extended L2: snapshots, resize and makeEmpty keep the bitmaps", () =>
  withExtL2(params(), true, async ({ open }) => {
    const node = await open();
    const q2 = q(node);
    await node.write(3000, pattern(5000, 1));
    await q2.snapshotCreate("s1");
    await node.write(4000, pattern(100, 2));
    await node.pwriteZeroes(CS + 4 * SC, 2 * SC, 0);
    await expectClean(node, "after writes over the snapshot");
    await q2.snapshotApply("s1");
    const want = backingData(SIZE);
    want.set(pattern(5000, 1), 3000);
    assertBytesEqual(await readAll(node, 0, 2 * CS), want.slice(0, 2 * CS), "snapshot data");
    await node.truncate(SIZE + 3 * CS, true, "off");
    await node.write(SIZE + CS + 10, pattern(10, 5));
    await node.truncate(SIZE - CS, true, "off");
    await expectClean(node, "after resize");
    await q2.snapshotDelete("s1");
    await q2.makeEmpty();
    assertBytesEqual(
      await readAll(node, 0, 2 * CS),
      backingData(SIZE).slice(0, 2 * CS),
      "empty reads the backing file",
    );
    await expectClean(node, "after makeEmpty");
    await node.unref("t");
  }));
