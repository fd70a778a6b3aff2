import { type Node, ReqFlags } from "@blockgraph/core";
import {
  assert,
  assertBytesEqual,
  assertEquals,
  assertRejectsWith,
  pattern,
} from "../../conformance/mod.ts";
import type { Qcow2CreateParams } from "./create.ts";
import { Incompat } from "./format.ts";
import { expectClean, q, qcow2Params, readAll, withImage } from "./test_fixtures.ts";

const CS = 4096;

function params(over: Partial<Qcow2CreateParams> = {}): Qcow2CreateParams {
  return qcow2Params({ clusterSize: CS, ...over });
}

/** Deep equality through JSON (assertEquals compares with ===). */
function same(actual: unknown, expected: unknown, label: string): void {
  assertEquals(JSON.stringify(actual), JSON.stringify(expected), label);
}

/** Pokes raw bytes into the image file. */
async function poke(mem: Node, offset: number, bytes: number[]): Promise<void> {
  await mem.write(offset, new Uint8Array(bytes));
}

Deno.test("qcow2 check finds nothing wrong in a fresh image and counts its clusters", () =>
  withImage(params(), async ({ open }) => {
    const node = await open();
    await node.write(0, pattern(10 * CS, 1));
    await expectClean(node, "after writes");
    const r = await q(node).check("none");
    assertEquals(r["allocated-clusters"], 10, "allocated");
    assertEquals(r["total-clusters"], 256, "total");
    await node.unref("t");
  }));

Deno.test("qcow2 check reports a leak and -r leaks repairs it", () =>
  withImage(params(), async ({ mem, open }) => {
    let node = await open();
    await node.write(0, pattern(3 * CS, 1));
    await node.unref("t");
    // Cluster 5 (the first data cluster) gets refcount 2 in the refcount block at 0x2000.
    await poke(mem, 0x2000 + 5 * 2, [0, 2]);
    node = await open({ "read-only": true });
    let r = await q(node).check("none");
    same(r.messages, [
      "Leaked cluster 5 refcount=2 reference=1",
      "ERROR OFLAG_COPIED data cluster: l2_entry=8000000000005000 refcount=2",
    ], "messages");
    same([r.leaks, r.corruptions], [1, 1], "counts");
    await node.unref("t");
    node = await open({ "check-open": true });
    r = await q(node).check("all");
    assertEquals(r["leaks-fixed"], 1, "leaks fixed");
    assert(r.messages.includes("Repairing cluster 5 refcount=2 reference=1"), "repair line");
    assert(r.messages.includes("Double checking the fixed image now..."), "second check");
    same([r.leaks, r.corruptions], [0, 0], "after repair");
    await expectClean(node, "after repair");
    await node.unref("t");
  }));

Deno.test("qcow2 check -r all rebuilds the refcounts when a refcount is zero", () =>
  withImage(params(), async ({ mem, open }) => {
    let node = await open();
    await node.write(0, pattern(3 * CS, 2));
    await node.unref("t");
    await poke(mem, 0x2000 + 6 * 2, [0, 0]);
    node = await open({ "check-open": true });
    const r = await q(node).check("all");
    same(r.messages.slice(0, 2), [
      "ERROR cluster 6 refcount=0 reference=1",
      "Rebuilding refcount structure",
    ], "first lines");
    assertEquals(r["corruptions-fixed"], 1, "fixed");
    await expectClean(node, "after rebuild");
    assertBytesEqual(await readAll(node, 0, 3 * CS), pattern(3 * CS, 2), "data");
    await node.write(50 * CS, pattern(CS, 3));
    await expectClean(node, "after a write on the rebuilt structure");
    await node.unref("t");
  }));

Deno.test("qcow2 refuses a corrupt image read/write unless opened for check, which clears it", () =>
  withImage(params(), async ({ mem, open }) => {
    await poke(mem, 79, [Incompat.CORRUPT]);
    await assertRejectsWith(open(), "EACCES", "corrupt image read/write");
    const node = await open({ "check-open": true });
    await q(node).check("all");
    await node.unref("t");
    const again = await open();
    assertEquals(q(again).formatInfo().corrupt, false, "corrupt bit");
    await again.unref("t");
  }));

Deno.test("qcow2 snapshots: create, write, apply and delete keep refcounts exact", () =>
  withImage(params(), async ({ open }) => {
    const node = await open();
    await node.write(0, pattern(4 * CS, 1));
    await q(node).snapshotCreate("one");
    await node.write(CS, pattern(CS, 2));
    await node.write(100 * CS, pattern(CS, 3));
    await expectClean(node, "after COW on shared clusters");
    await q(node).snapshotCreate("two");
    await q(node).snapshotCreate("one");
    same(q(node).snapshotList().map((s) => [s.id, s.name]), [
      ["1", "one"],
      ["2", "two"],
      ["3", "one"],
    ], "list");
    await q(node).snapshotApply("1");
    assertBytesEqual(await readAll(node, 0, 4 * CS), pattern(4 * CS, 1), "snapshot 1 data");
    assertBytesEqual(await readAll(node, 100 * CS, CS), new Uint8Array(CS), "later write gone");
    await expectClean(node, "after apply");
    await q(node).snapshotApply("two");
    assertBytesEqual(await readAll(node, 100 * CS, CS), pattern(CS, 3), "snapshot 2 data");
    await q(node).snapshotDelete("two");
    await q(node).snapshotDelete("one");
    await expectClean(node, "after deletes");
    await assertRejectsWith(q(node).snapshotApply("two"), "ENOENT", "apply deleted");
    await assertRejectsWith(q(node).snapshotDelete("9"), "ENOENT", "delete unknown");
    same(q(node).snapshotList().map((s) => s.id), ["3"], "left");
    await node.unref("t");
  }));

Deno.test("qcow2 truncate grows with preallocation and shrinks, freeing clusters", () =>
  withImage(params(), async ({ open }) => {
    const node = await open();
    await node.write(0, pattern(1 << 20, 4));
    await node.truncate(4 << 20, true, "metadata");
    assertEquals(node.getLength(), 4 << 20, "grown");
    let r = await q(node).check("none");
    assertEquals(r["allocated-clusters"], 1024, "metadata preallocation allocates clusters");
    assertBytesEqual(await readAll(node, 1 << 20, CS), new Uint8Array(CS), "new area zeros");
    await expectClean(node, "after growth");
    await assertRejectsWith(node.truncate(8000, true, "off"), "EINVAL", "not whole sectors");
    await node.truncate(8192, true, "off");
    r = await q(node).check("none");
    assertEquals(r["allocated-clusters"], 2, "after shrink");
    await expectClean(node, "after shrink");
    await assertRejectsWith(node.truncate(512, true, "full"), "ENOTSUP", "prealloc shrink");
    await node.truncate(3 * CS, true, "off");
    const want = new Uint8Array(3 * CS);
    want.set(pattern(1 << 20, 4).subarray(0, 8192));
    assertBytesEqual(await readAll(node, 0, 3 * CS), want, "regrown tail reads zeros");
    await node.unref("t");
  }));

Deno.test("qcow2 compressed writes read back, share clusters and pass check", () =>
  withImage(params({ clusterSize: 65536 }), async ({ open }) => {
    const node = await open();
    const data = new Uint8Array(4 * 65536);
    for (let i = 0; i < data.length; i++) data[i] = (i >> 9) & 0xff;
    await node.write(0, data, ReqFlags.WRITE_COMPRESSED);
    assertBytesEqual(await readAll(node, 0, data.length), data, "read back");
    const r = await q(node).check("none");
    assertEquals(r["compressed-clusters"], 4, "compressed clusters");
    assert(r["image-end-offset"] <= 6 * 65536, "packed into few host clusters");
    await expectClean(node, "after compressed writes");
    await assertRejectsWith(
      node.write(0, data.subarray(0, 65536), ReqFlags.WRITE_COMPRESSED),
      "EIO",
      "overwrite",
    );
    await assertRejectsWith(
      node.write(512, data.subarray(0, 65536), ReqFlags.WRITE_COMPRESSED),
      "EINVAL",
      "unaligned",
    );
    await node.write(10 * 65536 + 100, pattern(50, 1));
    await expectClean(node, "after a plain write");
    await node.unref("t");
  }));

Deno.test("qcow2 lazy refcounts set the dirty bit and the next open repairs", () =>
  withImage(params({ lazyRefcounts: true }), async ({ mem, open }) => {
    const node = await open();
    await node.write(0, pattern(5 * CS, 6));
    await node.flush();
    const hdr = new Uint8Array(8);
    await mem.read(72, hdr);
    assert((hdr[7]! & Incompat.DIRTY) !== 0, "dirty while open");
    // Simulate a crash: lose the refcount updates by zeroing the data clusters' refcounts.
    const img = q(node).image;
    img.broken = true;
    await node.unref("t");
    await mem.write(0x2000 + 5 * 2, new Uint8Array(10));
    const again = await open();
    await mem.read(72, hdr);
    assertEquals(hdr[7]! & Incompat.DIRTY, 0, "clean after repair");
    await expectClean(again, "after repair on open");
    assertBytesEqual(await readAll(again, 0, 5 * CS), pattern(5 * CS, 6), "data");
    await again.unref("t");
  }));

Deno.test("qcow2 amend changes refcount width, lazy refcounts and compat", () =>
  withImage(params(), async ({ open }) => {
    const node = await open();
    await node.write(0, pattern(20 * CS, 7));
    await q(node).amend({ refcount_bits: 64 });
    assertEquals(q(node).formatInfo()["refcount-bits"], 64, "width");
    await expectClean(node, "after width change");
    await q(node).amend({ refcount_bits: 1 });
    await expectClean(node, "1-bit refcounts");
    await assertRejectsWith(q(node).amend({ compat: "0.10" }), "ENOTSUP", "needs 16 bits");
    await q(node).amend({ refcount_bits: 16, lazy_refcounts: true });
    assertEquals(q(node).formatInfo()["lazy-refcounts"], true, "lazy");
    await q(node).amend({ lazy_refcounts: false });
    await node.pwriteZeroes(0, CS);
    await q(node).amend({ compat: "0.10" });
    assertEquals(q(node).formatInfo().compat, "0.10", "downgraded");
    await expectClean(node, "after downgrade");
    const want = pattern(20 * CS, 7);
    want.fill(0, 0, CS);
    assertBytesEqual(await readAll(node, 0, 20 * CS), want, "data");
    await assertRejectsWith(q(node).amend({ cluster_size: 512 }), "EINVAL", "create-only");
    await node.unref("t");
  }));

Deno.test("qcow2 cached L2 lookups skip the metadata lock and the refcount cache is bounded", () =>
  withImage(params({ size: 8 << 20, clusterSize: 512 }), async ({ open }) => {
    const node = await open({ "refcount-cache-size": 2048 });
    const img = q(node).image;
    await node.write(0, pattern(4 << 20, 8));
    assert(img.refcounts.cachedBlocks <= 4, "refcount cache bounded");
    assert(img.lookupCached(1000, 512) !== null, "cached lookup");
    let locked = 0;
    const run = img.lock.run.bind(img.lock);
    img.lock.run = (fn) => {
      locked++;
      return run(fn);
    };
    await readAll(node, 1000, 512);
    assertEquals(locked, 0, "no lock for a cached read");
    await expectClean(node, "bounded cache image");
    await node.unref("t");
  }));
