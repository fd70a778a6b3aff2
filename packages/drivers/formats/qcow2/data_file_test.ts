import { IoVector, type Node, ReqFlags } from "@blockgraph/core";
import { assert, assertBytesEqual, assertEquals, pattern } from "../../conformance/mod.ts";
import { preallocateMetadata, type Qcow2CreateParams } from "./create.ts";
import { viewOf } from "./format.ts";
import { expectClean, q, qcow2Params, readAll, rejects, withImage } from "./test_fixtures.ts";

const CS = 65536;
const SIZE = 1 << 20;

function params(over: Partial<Qcow2CreateParams> = {}): Qcow2CreateParams {
  return qcow2Params({ size: SIZE, clusterSize: CS, dataFile: "data.raw", ...over });
}

interface Fixture {
  mem: Node;
  data: Node;
  open(extra?: Record<string, unknown>): Promise<Node>;
}

/** A fresh image in memory whose external data file is the memory node `data`. */
function withDataFile(p: Qcow2CreateParams, fn: (f: Fixture) => Promise<void>): Promise<void> {
  return withImage(p, async ({ graph, mem, open }) => {
    const data = await graph.open({ driver: "memory", "node-name": "data", size: SIZE }, "t");
    await fn({
      mem,
      data,
      open: (extra = {}) => open({ "data-file": "data", discard: "unmap", ...extra }),
    });
    await data.unref("t");
  });
}

Deno.test("qcow2 data file: guest data lands at its guest offset in the data file", () =>
  withDataFile(params(), async ({ mem, data, open }) => {
    const node = await open();
    const fileLen = mem.getLength();
    await node.write(0, pattern(1000, 1));
    await node.write(5 * CS + 100, pattern(3 * CS, 2));
    await node.pwriteZeroes(9 * CS, CS, 0);
    await q(node).flush();
    assertBytesEqual(await readAll(data, 0, 1000), pattern(1000, 1), "cluster 0 (host offset 0)");
    assertBytesEqual(
      await readAll(data, 5 * CS + 100, 3 * CS),
      pattern(3 * CS, 2),
      "clusters 5..8",
    );
    assert(mem.getLength() <= fileLen + 2 * CS, "no data clusters in the image file");
    const r = await q(node).check("none");
    assertEquals(r["allocated-clusters"], 5, "allocated clusters");
    await expectClean(node, "after writes");
    await node.pdiscard(5 * CS, CS);
    assertBytesEqual(await readAll(node, 5 * CS, CS), new Uint8Array(CS), "discarded");
    await expectClean(node, "after discard");
    await node.unref("t");
    const again = await open({ "read-only": true });
    assertBytesEqual(await readAll(again, 0, 1000), pattern(1000, 1), "reopened");
    assertEquals(q(again).formatInfo()["data-file"], "data.raw", "info data-file");
    assertEquals(q(again).formatInfo()["data-file-raw"], false, "info data-file-raw");
    await again.unref("t");
  }));

Deno.test("qcow2 data file: a raw data file stays the guest's disk through writes, zeroes, discards", () =>
  withDataFile(params({ dataFileRaw: true }), async ({ data, open }) => {
    const node = await open();
    await preallocateMetadata(q(node).image);
    await data.write(0, pattern(SIZE, 7));
    await node.write(3 * CS + 5, pattern(2 * CS, 3));
    await node.pwriteZeroes(CS, CS, ReqFlags.MAY_UNMAP);
    await node.pdiscard(8 * CS, 2 * CS);
    await q(node).flush();
    const guest = await readAll(node, 0, SIZE);
    assertBytesEqual(await readAll(data, 0, SIZE), guest, "raw view equals the guest view");
    const want = pattern(SIZE, 7);
    want.set(pattern(2 * CS, 3), 3 * CS + 5);
    want.fill(0, CS, 2 * CS);
    want.fill(0, 8 * CS, 10 * CS);
    assertBytesEqual(guest, want, "data");
    await expectClean(node, "after");
    assertEquals(q(node).formatInfo()["data-file-raw"], true, "info data-file-raw");
    await node.unref("t");
  }));

Deno.test("qcow2 data file: compressed writes and internal snapshots are refused", () =>
  withDataFile(params(), async ({ open }) => {
    const node = await open();
    await rejects(
      node.pwritev(0, CS, IoVector.of(pattern(CS, 0)), 0, ReqFlags.WRITE_COMPRESSED),
      "ENOTSUP",
      "external data file",
    );
    await rejects(q(node).snapshotCreate("s"), "ENOTSUP", "Operation not supported");
    await expectClean(node, "after");
    await node.unref("t");
  }));

Deno.test("qcow2 data file: open needs the data file, and only images with one take it", async () => {
  const { dataFile: _, ...plain } = params();
  await withDataFile(plain, async ({ open }) => {
    await rejects(
      open(),
      "EINVAL",
      "'data-file' can only be set for images with an external data file",
    );
  });
  await withDataFile(params(), async ({ mem, open }) => {
    // Without the name in the header and without the option, there is nothing to open.
    const h = viewOf(await readAll(mem, 0, 4096));
    const extAt = 112;
    assertEquals(h.getUint32(extAt), 0x44415441, "the data file extension comes first");
    await mem.write(extAt, new Uint8Array(4).fill(0x11));
    await rejects(open({ "data-file": null }), "EINVAL", "'data-file' is required");
  });
});

Deno.test("qcow2 data file: extended L2 writes only the touched subclusters to the data file", () =>
  withDataFile(params({ extendedL2: true }), async ({ data, open }) => {
    const node = await open();
    const writes: [number, number][] = [];
    const orig = data.pwritev.bind(data);
    data.pwritev = (offset, bytes, qiov, qiovOffset, flags) => {
      writes.push([offset, bytes]);
      return orig(offset, bytes, qiov, qiovOffset, flags);
    };
    await node.write(2 * CS + 4096, pattern(4096, 9));
    data.pwritev = orig;
    assertEquals(JSON.stringify(writes), JSON.stringify([[2 * CS + 4096, 4096]]), "one write");
    const want = new Uint8Array(8192);
    want.set(pattern(4096, 9), 4096);
    assertBytesEqual(await readAll(node, 2 * CS, 8192), want, "reads");
    await expectClean(node, "after");
    await node.unref("t");
  }));
