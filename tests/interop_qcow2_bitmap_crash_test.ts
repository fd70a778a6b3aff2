/**
 * Crash safety of the qcow2 bitmap writes, judged by qemu-img: the image file is copied
 * after every metadata write blockgraph makes while it marks bitmaps in use (a reopen
 * read/write, then a guest write) and while it stores them at close (with a removed, a
 * rewritten and a new bitmap). Each copy is the file a crash at that point leaves: `qemu-img
 * check` must open it and find no corruption (leaked clusters are allowed), and its bitmaps
 * are either the old ones, the old ones in use, or the stored ones.
 *
 * @module
 */

import { deepStrictEqual as assertEquals, ok as assert } from "node:assert";
import { createDirtyBitmap, DirtyBitmaps, Graph, Perm } from "@blockgraph/core";
import { defaultRegistry, type Qcow2Instance } from "@blockgraph/drivers";
import { ensurePeers } from "./peers.ts";
import { mustPeer, qemuCreateQcow2, runPeer } from "./peer_run.ts";

/** The copies of `path` after each metadata write of the reopen, write and close. */
async function crashPoints(path: string, dir: string): Promise<string[]> {
  const graph = new Graph({ registry: defaultRegistry() });
  const node = await graph.open({
    driver: "qcow2",
    "read-only": true,
    file: { driver: "file", filename: path },
  }, "t");
  const copies: string[] = [];
  const image = (node.instance as Qcow2Instance).image;
  const write = image.write.bind(image);
  image.write = async (kind, offset, buf) => {
    await write(kind, offset, buf);
    const copy = `${dir}/crash-${copies.length}.qcow2`;
    await Deno.copyFile(path, copy);
    copies.push(copy);
  };
  try {
    await graph.reopen(node, { "read-only": false });
    const blk = graph.createBackend({ perm: Perm.CONSISTENT_READ | Perm.WRITE, shared: Perm.ALL });
    await blk.insertRoot(node);
    await blk.write(0, new Uint8Array(4096).fill(7));
    await blk.removeRoot();
    new DirtyBitmaps(graph).remove({ node: node.name, name: "b1" });
    const bm = createDirtyBitmap(node, 4096, "new");
    bm.persistent = true;
    bm.set(0, 1024 * 1024);
  } finally {
    await node.unref("t");
    await graph.closeAll();
  }
  return copies;
}

Deno.test("qcow2 bitmaps: a crash at any metadata write leaves at most leaked clusters", async () => {
  await ensurePeers(["qemu-img", "qemu-io"]);
  const dir = await Deno.makeTempDir({ prefix: "blockgraph-bitmap-crash-" });
  try {
    for (const cs of [512, 65536]) {
      const img = `${dir}/i${cs}.qcow2`;
      await qemuCreateQcow2(img, "2M", `cluster_size=${cs}`);
      for (const b of ["b0", "b1", "b2"]) await mustPeer("qemu-img", ["bitmap", "--add", img, b]);
      await mustPeer("qemu-io", ["-c", "write 64k 64k", "-c", "write 1M 4k", img]);
      const copies = await crashPoints(img, dir);
      assert(copies.length >= 6, `${cs}: only ${copies.length} metadata writes`);
      const seen = new Set<string>();
      for (const copy of copies) {
        const r = await runPeer("qemu-img", ["check", "--output=json", copy]);
        const json = JSON.parse(r.out.slice(r.out.indexOf("{")));
        assert(r.code === 0 || r.code === 3, `${cs} ${copy}: check exits ${r.code}: ${r.err}`);
        assertEquals([copy, json.corruptions ?? 0, json["check-errors"]], [copy, 0, 0]);
        const info = JSON.parse(await mustPeer("qemu-img", ["info", "--output=json", copy]));
        const bitmaps = (info["format-specific"].data.bitmaps ?? []) as {
          name: string;
          flags: string[];
        }[];
        seen.add(bitmaps.map((b) => `${b.name}${b.flags.includes("in-use") ? "*" : ""}`).join());
      }
      // The states a crash can leave, in order: dropped (the autoclear bit is clear while the
      // directory is rewritten in place), in use, b1 removed, then the stored bitmaps.
      for (const s of ["", "b0*,b1*,b2*", "b0*,b2*", "b0,b2,new"]) {
        assert(seen.has(s), `${cs}: no crash point leaves ${s}: ${[...seen].join(" | ")}`);
      }
      const r = await runPeer("qemu-img", ["check", img]);
      assertEquals([cs, r.code, r.out.split("\n")[0]], [
        cs,
        0,
        "No errors were found on the image.",
      ]);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
