import { BlockError, DriverRegistry, Graph, Perm } from "@blockgraph/core";
import { assert, assertEquals } from "../conformance/mod.ts";
import { fileDriver } from "./file.ts";
import { libc } from "../io/libc.ts";
import { formatQcow2, qcow2Driver } from "../formats/qcow2/mod.ts";
import { qcow2Params } from "../formats/qcow2/test_fixtures.ts";

const registry = new DriverRegistry([fileDriver]);
/** qemu-img's users share only reads (BDRV_O_NO_SHARE); `-U` shares everything. */
const NO_SHARE = Perm.CONSISTENT_READ | Perm.WRITE_UNCHANGED;

/** A user of `path` in a graph of its own (so a descriptor, and locks, of its own). */
async function user(
  path: string,
  perm: number,
  shared: number,
  options: Record<string, unknown> = {},
): Promise<Graph> {
  const graph = new Graph({ registry });
  try {
    const node = await graph.open({ driver: "file", filename: path, ...options }, "t");
    const blk = graph.createBackend({ perm, shared });
    try {
      await blk.insertRoot(node);
    } finally {
      await node.unref("t");
    }
    return graph;
  } catch (e) {
    await graph.closeAll();
    throw e;
  }
}

async function refused(path: string, perm: number, shared: number): Promise<BlockError> {
  try {
    await (await user(path, perm, shared)).closeAll();
  } catch (e) {
    assert(e instanceof BlockError, String(e));
    return e;
  }
  throw new Error(`perm ${perm} shared ${shared} was not refused`);
}

Deno.test("file image locks: a writer and a reader that does not share writes refuse each other", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/disk.img`;
    await fileDriver.create!({ filename: path, size: 1 << 20 }, registry);
    const RW = Perm.CONSISTENT_READ | Perm.WRITE;
    const writer = await user(path, RW, NO_SHARE);
    const e = await refused(path, Perm.CONSISTENT_READ, NO_SHARE);
    assertEquals(e.code, "EAGAIN");
    assertEquals(e.message, 'Failed to get shared "write" lock');
    assertEquals(e.hint, `Is another process using the image [${path}]?\n`);
    // Sharing everything (qemu-img -U), or no locking at all, opens beside the writer.
    await (await user(path, Perm.CONSISTENT_READ, Perm.ALL, { "read-only": true })).closeAll();
    await (await user(path, Perm.CONSISTENT_READ, NO_SHARE, { locking: "off" })).closeAll();
    await writer.closeAll();
    // Readers share one another; a writer then finds users that do not share writes.
    const reader = await user(path, Perm.CONSISTENT_READ, NO_SHARE);
    await (await user(path, Perm.CONSISTENT_READ, NO_SHARE)).closeAll();
    const w = await refused(path, RW, NO_SHARE);
    assertEquals(w.message, 'Failed to get "write" lock');
    await reader.closeAll();
    // With the last user gone, its locks went with its descriptor.
    await (await user(path, RW, NO_SHARE)).closeAll();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a chain of images checks each file's locks when its permissions grow, not at every refresh", async () => {
  const dir = await Deno.makeTempDir({ prefix: "blockgraph-locks-" });
  const chain = new DriverRegistry([fileDriver, qcow2Driver]);
  const depth = 16;
  try {
    for (let i = 0; i < depth; i++) {
      const path = `${dir}/l${i}.qcow2`;
      await Deno.writeFile(path, new Uint8Array(0));
      const graph = new Graph({ registry: chain });
      const file = await graph.open({ driver: "file", filename: path }, "t");
      await formatQcow2(file, {
        ...qcow2Params(),
        ...(i > 0 ? { backingFile: `${dir}/l${i - 1}.qcow2`, backingFormat: "qcow2" } : {}),
      });
      await file.unref("t");
      await graph.closeAll();
    }
    const symbols = libc();
    const fcntl = symbols.fcntl;
    let calls = 0;
    (symbols as { fcntl: typeof fcntl }).fcntl = (...args: Parameters<typeof fcntl>) => {
      calls++;
      return fcntl(...args);
    };
    const graph = new Graph({ registry: chain });
    try {
      const top = `${dir}/l${depth - 1}.qcow2`;
      const node = await graph.open(
        { driver: "qcow2", file: { driver: "file", filename: top } },
        "t",
      );
      await node.unref("t");
    } finally {
      (symbols as { fcntl: typeof fcntl }).fcntl = fcntl;
      await graph.closeAll();
    }
    // About ten a file; refreshing every file below each new layer made 4774 for 31 images.
    assert(calls <= depth * 16, `${calls} fcntl calls for a chain of ${depth}`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
