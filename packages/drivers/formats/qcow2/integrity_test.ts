import { IoVector, type Node, ReqFlags } from "@blockgraph/core";
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

function corruptBit(node: Node): boolean {
  return (q(node).image.header.incompatible & BigInt(Incompat.CORRUPT)) !== 0n;
}

Deno.test("qcow2 check reports refcount table entries with reserved bits set, as QEMU does", () =>
  withImage(params(), async ({ mem, open }) => {
    let node = await open();
    await node.write(0, pattern(2 * CS, 1));
    const at = q(node).image.header.refcountTableOffset;
    await node.unref("t");
    const entry = new Uint8Array(8);
    await mem.read(at, entry);
    entry[7]! |= 1;
    await mem.write(at, entry);
    node = await open({ "read-only": true });
    assertEquals(q(node).image.refcounts.table[0]! % CS, 0, "the offset leaves the reserved bits");
    const r = await q(node).check("none");
    assert(
      r.messages.includes("ERROR refcount table entry 0 has reserved bits set"),
      `messages: ${r.messages.join(" | ")}`,
    );
    assert(r.corruptions >= 1, "counted as a corruption");
    assertBytesEqual(await readAll(node, 0, 2 * CS), pattern(2 * CS, 1), "data");
    await node.unref("t");
  }));

Deno.test("qcow2 compressed writes never pack into a cluster freed by snapshot apply and reused", () =>
  withImage(params(), async ({ open }) => {
    const node = await open();
    await q(node).snapshotCreate("s0");
    await node.write(0, pattern(CS, 0x11));
    const sparse = new Uint8Array(CS).fill(0x22, 0, 100);
    await node.pwritev(CS, CS, IoVector.of(sparse), 0, ReqFlags.WRITE_COMPRESSED);
    // The compressed cluster's host cluster is freed; two plain writes allocate it again.
    await q(node).snapshotApply("s0");
    await node.write(5 * CS, pattern(CS, 0x55));
    await node.write(6 * CS, pattern(CS, 0x66));
    const more = new Uint8Array(CS).fill(0x77, 0, 100);
    await node.pwritev(7 * CS, CS, IoVector.of(more), 0, ReqFlags.WRITE_COMPRESSED);
    assertBytesEqual(await readAll(node, 5 * CS, CS), pattern(CS, 0x55), "cluster 5");
    assertBytesEqual(await readAll(node, 6 * CS, CS), pattern(CS, 0x66), "cluster 6");
    assertBytesEqual(await readAll(node, 7 * CS, CS), more, "cluster 7");
    await expectClean(node, "after the writes");
    await node.unref("t");
  }));

Deno.test("qcow2 compressed writes start a new cluster at the maximum refcount (1 and 8 bits)", async () => {
  for (const [bits, clusterSize, writes] of [[1, CS, 3], [8, 65536, 300]] as const) {
    const p = params({ refcountBits: bits, clusterSize, size: writes * clusterSize });
    await withImage(p, async ({ open }) => {
      const node = await open();
      const data = (i: number) => new Uint8Array(clusterSize).fill(i & 0xff, 0, 8);
      for (let i = 0; i < writes; i++) {
        await node.pwritev(
          i * clusterSize,
          clusterSize,
          IoVector.of(data(i)),
          0,
          ReqFlags.WRITE_COMPRESSED,
        );
      }
      assert(!corruptBit(node), `${bits} bits: not marked corrupt`);
      for (let i = 0; i < writes; i += 37) {
        assertBytesEqual(
          await readAll(node, i * clusterSize, clusterSize),
          data(i),
          `${bits}: ${i}`,
        );
      }
      await expectClean(node, `${bits}-bit refcounts`);
      await node.unref("t");
    });
  }
});

Deno.test("qcow2 snapshot create past the refcount maximum fails with EINVAL and leaves the image usable", () =>
  withImage(params({ refcountBits: 1 }), async ({ open }) => {
    const node = await open();
    await node.write(0, pattern(2 * CS, 1));
    await assertRejectsWith(
      q(node).snapshotCreate("s1"),
      "EINVAL",
      "snapshot with 1-bit refcounts",
    );
    assert(!corruptBit(node) && !q(node).image.broken, "not marked corrupt");
    assertEquals(q(node).snapshotList().length, 0, "no snapshot");
    await expectClean(node, "after the failed snapshot");
    await node.write(CS, pattern(CS, 2));
    await node.write(8 * CS, pattern(CS, 3));
    assertBytesEqual(
      await readAll(node, 0, 2 * CS),
      new Uint8Array([...pattern(CS, 1), ...pattern(CS, 2)]),
      "data",
    );
    await expectClean(node, "after later writes");
    await node.unref("t");
  }));

/**
 * Holds the image's next guest data write until `release` is called; `entered` resolves
 * once it started.
 */
function gateNextWrite(node: Node): { entered: Promise<void>; release: () => void } {
  const image = q(node).image;
  const orig = image.writeData.bind(image);
  let enter!: () => void;
  let release!: () => void;
  const entered = new Promise<void>((r) => (enter = r));
  const gate = new Promise<void>((r) => (release = r));
  image.writeData = async (...args) => {
    image.writeData = orig;
    enter();
    await gate;
    return await orig(...args);
  };
  return { entered, release };
}

const settle = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

Deno.test("qcow2 discard waits for an in-place write in flight before its cluster is reused", () =>
  withImage(params(), async ({ open }) => {
    const node = await open({ discard: "unmap" });
    await node.write(0, pattern(CS, 0x11));
    const gate = gateNextWrite(node);
    const slow = node.write(0, pattern(CS, 0x22));
    await gate.entered;
    const discard = node.pdiscard(0, CS);
    const reuse = discard.then(() => node.write(5 * CS, pattern(CS, 0x55)));
    // Without the wait, the discard and the write that reuses the cluster finish first.
    await Promise.race([reuse, settle(50)]);
    gate.release();
    await Promise.all([slow, discard, reuse]);
    assertBytesEqual(await readAll(node, 5 * CS, CS), pattern(CS, 0x55), "cluster 5");
    await expectClean(node, "after the race");
    await node.unref("t");
  }));

Deno.test("qcow2 snapshot apply waits for an in-place write in flight before freeing", () =>
  withImage(params(), async ({ open }) => {
    const node = await open();
    await q(node).snapshotCreate("empty");
    await node.write(0, pattern(CS, 0x11));
    const gate = gateNextWrite(node);
    const slow = node.write(0, pattern(CS, 0x22));
    await gate.entered;
    // Apply drops the active tree, freeing the cluster the slow write goes to.
    const apply = q(node).snapshotApply("empty");
    const reuse = apply.then(() => node.write(5 * CS, pattern(CS, 0x55)));
    await Promise.race([reuse, settle(50)]);
    gate.release();
    await Promise.all([slow, apply, reuse]);
    assertBytesEqual(await readAll(node, 5 * CS, CS), pattern(CS, 0x55), "cluster 5");
    await expectClean(node, "after apply");
    await node.unref("t");
  }));

Deno.test("qcow2 open refuses a snapshot L1 table that is too large or past the end of the file", () =>
  withImage(params(), async ({ mem, open }) => {
    const node = await open();
    await node.write(0, pattern(CS, 1));
    await q(node).snapshotCreate("s1");
    const at = q(node).image.header.snapshotsOffset + 8;
    await node.unref("t");
    const size = new Uint8Array(4);
    for (
      const [l1Size, code, message] of [
        [0x10000000, "EFBIG", "Snapshot L1 table too large"],
        [0x100000, "EINVAL", "is beyond the end of the image file"],
      ] as const
    ) {
      new DataView(size.buffer).setUint32(0, l1Size);
      await mem.write(at, size);
      const e = await assertRejectsWith(open({ "read-only": true }), code, `l1_size ${l1Size}`);
      assert(e.message.includes(message), `l1_size ${l1Size}: ${e.message}`);
    }
  }));
