/**
 * A qcow2 node opened read-only (as a backing file is) and reopened read-write writes for
 * real: its metadata reaches the file, qemu-img check is clean and qemu-io reads the data.
 */

import { Graph, Perm } from "@blockgraph/core";
import { defaultRegistry } from "@blockgraph/drivers";
import { ensurePeers } from "./peers.ts";
import { expect, expectQemuClean, must, withDir } from "./interop_qcow2_helpers.ts";

Deno.test("qcow2 reopened read-write from read-only writes through to the image", async () => {
  await ensurePeers(["qemu-img", "qemu-io"]);
  await withDir(async (dir) => {
    const base = `${dir}/base.qcow2`;
    const top = `${dir}/top.qcow2`;
    await must("qemu-img", ["create", "-q", "-f", "qcow2", base, "4M"]);
    await must("qemu-img", ["create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", top]);
    const graph = new Graph({ registry: defaultRegistry() });
    const node = await graph.open(
      { driver: "qcow2", file: { driver: "file", filename: top } },
      "t",
    );
    const backing = node.backing!.node!;
    expect(backing.flags.readOnly, "the backing file opens read-only");
    await graph.reopen(backing, { "read-only": false });
    expect(!backing.flags.readOnly, "reopened read-write");
    const blk = graph.createBackend({ perm: Perm.CONSISTENT_READ | Perm.WRITE, shared: Perm.ALL });
    await blk.insertRoot(backing);
    await blk.write(65536, new Uint8Array(65536).fill(0x5c));
    await blk.removeRoot();
    await graph.reopen(backing, { "read-only": true });
    await node.unref("t");
    await graph.closeAll();
    await expectQemuClean(base, "base after writing through the reopened node");
    await must("qemu-io", ["-f", "qcow2", "-r", "-c", "read -P 0x5c 65536 65536", base]);
  });
});
