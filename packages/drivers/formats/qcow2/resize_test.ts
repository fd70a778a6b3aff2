import { assertBytesEqual, pattern } from "../../conformance/mod.ts";
import { expectClean, q, qcow2Params, readAll, rejects, withImage } from "./test_fixtures.ts";

const MIB = 1 << 20;

for (
  const [label, over] of [
    ["64 KiB clusters", {}],
    ["4 KiB clusters", { clusterSize: 4096 }],
    ["extended L2", { extendedL2: true }],
  ] as const
) {
  Deno.test(`qcow2 growing over a longer backing file reads zeros in the new area (${label})`, () =>
    withImage(qcow2Params({ size: MIB, ...over }), async ({ graph, open }) => {
      const base = await graph.open({ driver: "memory", "node-name": "base", size: 2 * MIB }, "t");
      await base.write(0, pattern(2 * MIB, 7));
      const node = await open({ backing: "base" });
      const want = pattern(2 * MIB, 7);
      // Shrunk to an unaligned size, then grown past the old cluster's end and past it again:
      // from the old end on, the backing file's bytes must not show.
      for (const [size, grown] of [[MIB - 70_144, MIB - 30_208], [MIB - 30_208, MIB + 300_032]]) {
        await node.truncate(size!, true, "off");
        await node.truncate(grown!, true, "off");
        want.fill(0, size!, grown!);
        assertBytesEqual(await readAll(node, 0, grown!), want.subarray(0, grown!), `${grown}`);
        await expectClean(node, `grown to ${grown}`);
      }
      await node.unref("t");
      await base.unref("t");
    }));
}

Deno.test("qcow2 version 2 cannot grow past its last cluster over a longer backing file", () =>
  withImage(qcow2Params({ size: MIB, version: 2 }), async ({ graph, open }) => {
    const base = await graph.open({ driver: "memory", "node-name": "base", size: 2 * MIB }, "t");
    await base.write(0, pattern(2 * MIB, 7));
    const node = await open({ backing: "base" });
    await node.truncate(MIB - 30_208, true, "off");
    // Within the last cluster: zeros are written.
    await node.truncate(MIB - 10_240, true, "off");
    const want = pattern(MIB, 7).subarray(0, MIB - 10_240);
    want.fill(0, MIB - 30_208);
    assertBytesEqual(await readAll(node, 0, MIB - 10_240), want, "grown in the last cluster");
    // Past it: no zero clusters to make.
    await rejects(
      node.truncate(2 * MIB, true, "off"),
      "ENOTSUP",
      "Failed to zero out new clusters: Operation not supported",
    );
    await expectClean(node, "after the refused resize");
    await node.unref("t");
    await base.unref("t");
  }));

Deno.test("qcow2 version 2 with internal snapshots cannot be resized, as QEMU", () =>
  withImage(qcow2Params({ size: MIB, version: 2 }), async ({ open }) => {
    const node = await open();
    await node.write(0, pattern(4096, 1));
    await q(node).snapshotCreate("s");
    // Its snapshot table has no disk sizes: a resize would resize the snapshots too.
    for (const size of [2 * MIB, MIB / 2]) {
      await rejects(node.truncate(size, true, "off"), "ENOTSUP", "Can't resize a v2 image which");
    }
    await q(node).snapshotDelete("s");
    await node.truncate(2 * MIB, true, "off");
    await expectClean(node, "grown without snapshots");
    await node.unref("t");
  }));
