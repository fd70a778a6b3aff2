import { deepStrictEqual as assertEquals, ok as assert } from "node:assert";
import { BlockError } from "./errors.ts";
import { Perm } from "./permissions.ts";
import { assertRejects, assertThrows, ramLogs, testGraph } from "./test_util.ts";

Deno.test("Graph.open names nodes: user names are validated, others generated", async () => {
  const g = testGraph();
  const a = await g.open({ driver: "ram", "node-name": "disk0" }, "t");
  const b = await g.open({ driver: "ram" }, "t");
  assertEquals(a.name, "disk0");
  assert(b.name.startsWith("#block"));
  assert(b.autoNamed);
  await assertRejects(
    () => g.open({ driver: "ram", "node-name": "disk0" }),
    BlockError,
    "Duplicate nodes with node-name='disk0'",
  );
  await assertRejects(
    () => g.open({ driver: "ram", "node-name": "0bad" }),
    BlockError,
    "Invalid node-name: '0bad'",
  );
  await assertRejects(
    () => g.open({ driver: "ram", "node-name": "a".repeat(32) }),
    BlockError,
    "Node name too long",
  );
  await assertRejects(() => g.open({ driver: "nope" }), BlockError, "Unknown driver 'nope'");
  await assertRejects(
    () => g.open({ driver: "ram", bogus: 1 }),
    BlockError,
    "Block protocol 'ram' doesn't support the option 'bogus'",
  );
  await a.unref("t");
  await b.unref("t");
  await g.closeAll();
});

Deno.test("Graph names: nodes and Backends share one namespace", async () => {
  const g = testGraph();
  const n = await g.open({ driver: "ram", "node-name": "x0" }, "t");
  assertThrows(
    () => g.createBackend({ name: "x0" }),
    BlockError,
    "Device name 'x0' conflicts with an existing node name",
  );
  g.createBackend({ name: "drive0" });
  await assertRejects(
    () => g.open({ driver: "ram", "node-name": "drive0" }),
    BlockError,
    "node-name=drive0 is conflicting with a device id",
  );
  assertThrows(
    () => g.createBackend({ name: "drive0" }),
    BlockError,
    "Device with id 'drive0' already exists",
  );
  await n.unref("t");
  await g.closeAll();
});

Deno.test("Node.unref to zero closes the node and releases its children; the ledger names holders", async () => {
  const g = testGraph();
  const top = await g.open({
    driver: "pass",
    "node-name": "f",
    file: { driver: "ram", "node-name": "r" },
  }, "test");
  const r = g.findNode("r")!;
  assertEquals(r.refcount, 1);
  assertEquals(g.holders(r), [{ holder: "node 'f' (as 'file')", count: 1 }]);
  r.ref("extra");
  await top.unref("test");
  assertEquals(g.findNode("f"), undefined);
  assert(r.isOpen, "child still held by 'extra' stays open");
  assertEquals(g.holders(r), [{ holder: "extra", count: 1 }]);
  await r.unref("extra");
  assert(!r.isOpen);
  assertEquals(ramLogs.get("r")!.ops.at(-1)!.op, "close");
  await assertRejects(() => r.unref("again"), BlockError, "already closed");
  await g.closeAll();
});

Deno.test("Graph.closeAll reports a leaked node with who holds it", async () => {
  const g = testGraph();
  const n = await g.open({ driver: "ram", "node-name": "leak" }, "forgotten-user");
  void n;
  const err = await assertRejects(() => g.closeAll(), BlockError);
  assert(err.message.includes("'leak'") && err.message.includes("forgotten-user"), err.message);
});

Deno.test("Graph.blockdevDel applies QEMU's checks in order", async () => {
  const g = testGraph();
  await assertRejects(
    () => g.blockdevDel("nope"),
    BlockError,
    "Failed to find node with node-name='nope'",
  );
  const n = await g.open({ driver: "ram", "node-name": "m0" }, "blockdev-add");
  g.addMonitorNode(n, "blockdev-add");
  const other = await g.open({ driver: "ram", "node-name": "plain" }, "t");
  await assertRejects(
    () => g.blockdevDel("plain"),
    BlockError,
    "Node plain is not owned by the monitor",
  );
  const blk = g.createBackend({ perm: Perm.CONSISTENT_READ });
  await blk.insertRoot(n);
  await assertRejects(() => g.blockdevDel("m0"), BlockError, "Node m0 is in use");
  await blk.removeRoot();
  n.ref("someone");
  await assertRejects(() => g.blockdevDel("m0"), BlockError, "Block device m0 is in use");
  await n.unref("someone");
  await g.blockdevDel("m0");
  assert(!n.isOpen);
  await other.unref("t");
  await g.closeAll();
});

Deno.test("auto-read-only lets a protocol that cannot write open read-only", async () => {
  const g = testGraph();
  const err = await assertRejects(() => g.open({ driver: "ram", "deny-write": true }), BlockError);
  assertEquals(err.code, "EACCES");
  const n = await g.open({ driver: "ram", "deny-write": true, "auto-read-only": true }, "t");
  assert(n.flags.readOnly);
  const ro = await g.open({ driver: "ram", "deny-write": true, "read-only": true }, "t");
  assert(ro.flags.readOnly);
  await n.unref("t");
  await ro.unref("t");
  await g.closeAll();
});

Deno.test("Node.unref refuses a reference its parents hold, changing nothing", async () => {
  const g = testGraph();
  const n = await g.open({ driver: "ram", "node-name": "held" }, "t");
  const blk = g.createBackend({ perm: Perm.CONSISTENT_READ });
  await blk.insertRoot(n);
  await n.unref("t");
  await assertRejects(() => n.unref("t"), BlockError, "has no reference to drop");
  assert(n.isOpen);
  assertEquals(g.findNode("held"), n);
  await g.closeAll();
  assert(!n.isOpen);
});

Deno.test("Graph.open closes the driver instance when opening fails after the driver opened", async () => {
  const g = testGraph();
  await assertRejects(
    () => g.open({ driver: "ram", "node-name": "odd", align: 3 }),
    BlockError,
    "request alignment 3",
  );
  assertEquals(ramLogs.get("odd")!.ops.at(-1)?.op, "close");
  assertEquals(g.nodes().length, 0);
  await g.closeAll();
});

Deno.test("OpenContext.childOption tells a left-out child from an explicit null", async () => {
  const seen: string[] = [];
  const { DriverRegistry } = await import("./driver.ts");
  const { Graph } = await import("./graph.ts");
  const { testDrivers } = await import("./test_util.ts");
  const probe = {
    name: "probe-backing",
    kind: "format" as const,
    supportsBacking: true,
    childOptions: ["file"],
    options: {},
    async open(ctx: import("./driver.ts").OpenContext) {
      seen.push(ctx.childOption("backing"));
      const file = (await ctx.openChild("file", 0x13, true))!;
      await ctx.openChild("backing", 0x8, false);
      return {
        getLength: () => file.node!.getLength(),
        preadv: () => Promise.resolve(),
        pwritev: () => Promise.resolve(),
        close: () => Promise.resolve(),
      };
    },
  };
  const g = new Graph({ registry: new DriverRegistry([...testDrivers, probe]) });
  const a = await g.open({ driver: "probe-backing", file: { driver: "ram" } }, "t");
  const b = await g.open({ driver: "probe-backing", file: { driver: "ram" }, backing: null }, "t");
  const c = await g.open({
    driver: "probe-backing",
    file: { driver: "ram" },
    backing: { driver: "ram" },
  }, "t");
  assertEquals(seen, ["absent", "none", "given"]);
  for (const n of [a, b, c]) await n.unref("t");
  await g.closeAll();
});
