import { createDirtyBitmap, Graph } from "@blockgraph/core";
import { defaultRegistry } from "@blockgraph/drivers";
import { deepStrictEqual as assertEquals } from "node:assert";
import { bitmapExtents } from "./extents.ts";
import { selectContexts } from "./meta_context.ts";

Deno.test("meta contexts: qemu:allocation-depth only on request; bitmap ids from 2; namespaces list, set takes full names", async () => {
  const graph = new Graph({ registry: defaultRegistry() });
  const node = await graph.open({ driver: "memory", size: 1 << 20, "node-name": "m" }, "t");
  try {
    const a = createDirtyBitmap(node, 65536, "a");
    const b = createDirtyBitmap(node, 4096, "b");
    const names = (q: string[], list: boolean, allocationDepth = true) =>
      selectContexts(q, list, { bitmaps: [a, b], allocationDepth }).map((c) => `${c.id}:${c.name}`);
    assertEquals(names([], true), [
      "0:base:allocation",
      "1:qemu:allocation-depth",
      "2:qemu:dirty-bitmap:a",
      "3:qemu:dirty-bitmap:b",
    ]);
    assertEquals(names(["qemu:dirty-bitmap:"], true), [
      "2:qemu:dirty-bitmap:a",
      "3:qemu:dirty-bitmap:b",
    ]);
    assertEquals(names(["qemu:"], true), [
      "1:qemu:allocation-depth",
      "2:qemu:dirty-bitmap:a",
      "3:qemu:dirty-bitmap:b",
    ]);
    assertEquals(names(["qemu:dirty-bitmap:"], false), []);
    assertEquals(names(["qemu:dirty-bitmap:nope", "qemu:dirty-bitmap:b"], false), [
      "3:qemu:dirty-bitmap:b",
    ]);
    assertEquals(selectContexts(["qemu:dirty-bitmap:a"], false).length, 0);
    // Without allocation-depth (QEMU's default) the context is neither listed nor set, and
    // the bitmaps keep their ids.
    assertEquals(names([], true, false), [
      "0:base:allocation",
      "2:qemu:dirty-bitmap:a",
      "3:qemu:dirty-bitmap:b",
    ]);
    assertEquals(names(["qemu:"], true, false), ["2:qemu:dirty-bitmap:a", "3:qemu:dirty-bitmap:b"]);
    assertEquals(names(["qemu:allocation-depth", "base:allocation"], false, false), [
      "0:base:allocation",
    ]);

    a.set(65536, 1);
    a.set(5 * 65536, 70000);
    assertEquals(bitmapExtents(a, 0, 1 << 20, 100), [
      { length: 65536, flags: 0 },
      { length: 65536, flags: 1 },
      { length: 3 * 65536, flags: 0 },
      { length: 2 * 65536, flags: 1 },
      { length: (1 << 20) - 7 * 65536, flags: 0 },
    ]);
    // Clipped to the request; REQ_ONE gives the first extent only.
    assertEquals(bitmapExtents(a, 70000, 100000, 100), [
      { length: 131072 - 70000, flags: 1 },
      { length: 170000 - 131072, flags: 0 },
    ]);
    assertEquals(bitmapExtents(a, 0, 1 << 20, 1), [{ length: 65536, flags: 0 }]);
    assertEquals(bitmapExtents(b, 0, 4096, 100), [{ length: 4096, flags: 0 }]);
  } finally {
    await node.unref("t");
    await graph.closeAll();
  }
});
