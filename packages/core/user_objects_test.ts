import { deepStrictEqual as assertEquals, ok as assert } from "node:assert";
import { type BlockDriver, DriverRegistry } from "./driver.ts";
import { BlockError } from "./errors.ts";
import { Graph } from "./graph.ts";
import { assertThrows } from "./test_util.ts";
import { UserObjects } from "./user_objects.ts";

Deno.test("UserObjects.add keeps a copy of the definition and refuses a duplicate id", () => {
  const objects = new UserObjects();
  const def = { "qom-type": "secret", id: "s0", data: "x" };
  objects.add(def);
  def.data = "changed";
  assertEquals(objects.get("s0"), { "qom-type": "secret", id: "s0", data: "x" });
  const e = assertThrows(
    () => objects.add({ "qom-type": "authz-simple", id: "s0", identity: "CN=a" }),
    BlockError,
    "attempt to add duplicate property 's0' to object (type 'container')",
  );
  assertEquals(e.code, "EEXIST");
  assertEquals([...objects].map((o) => o.id), ["s0"]);
  assertEquals(objects.size, 1);
});

Deno.test("UserObjects.delete removes the object; an unknown id is ENOENT with QEMU's message", () => {
  const objects = new UserObjects();
  objects.add({ "qom-type": "secret", id: "s0", data: "x" });
  objects.delete("s0");
  assert(!objects.has("s0"));
  const e = assertThrows(() => objects.delete("s0"), BlockError, "object 's0' not found");
  assertEquals(e.code, "ENOENT");
  objects.add({ "qom-type": "secret", id: "s0", data: "y" });
  assertEquals(objects.get("s0")?.data, "y");
});

/** A protocol that takes the `size` property of the `sized` object its `object` option names. */
const sized: BlockDriver = {
  name: "sized",
  kind: "protocol",
  options: { object: { type: "string", description: "id of a 'sized' object" } },
  open(ctx, options) {
    const id = options.object as string;
    const o = ctx.node.graph.objects.get(id);
    if (!o) return Promise.reject(new BlockError("EINVAL", `No object with id '${id}'`));
    const size = Number(o.size);
    return Promise.resolve({
      getLength: () => size,
      preadv: () => Promise.resolve(),
      pwritev: () => Promise.resolve(),
      close: () => Promise.resolve(),
    });
  },
};

Deno.test("Graph.objects: a driver finds the object its options name through its node's graph", async () => {
  const graph = new Graph({ registry: new DriverRegistry([sized]) });
  try {
    graph.objects.add({ "qom-type": "sized", id: "o0", size: "65536" });
    const node = await graph.open({ driver: "sized", object: "o0" }, "t");
    assertEquals(node.getLength(), 65536);
    // Deleting the object leaves the node as it opened; later opens no longer find it.
    graph.objects.delete("o0");
    assertEquals(node.getLength(), 65536);
    await node.unref("t");
    let err: unknown = null;
    try {
      await graph.open({ driver: "sized", object: "o0" }, "t");
    } catch (e) {
      err = e;
    }
    assert(err instanceof BlockError && err.message.includes("No object with id 'o0'"), `${err}`);
  } finally {
    await graph.closeAll();
  }
});
