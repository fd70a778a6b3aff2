import { deepStrictEqual as assertEquals, ok as assert } from "node:assert";
import {
  type BlockDriver,
  BlockError,
  BlockJob,
  DriverRegistry,
  Graph,
  type Node,
  Perm,
} from "@blockgraph/core";
import { defaultRegistry } from "@blockgraph/drivers";
import type { Daemon } from "./daemon.ts";
import { applyAction, createDaemon } from "./run_daemon.ts";
import { addMonitor } from "./run_daemon.ts";
import { TestQmpClient } from "./testing_qmp_client.ts";
import { startQmpDaemon } from "./testing_qmp_daemon.ts";

interface Fixture {
  daemon: Daemon;
  dir: string;
  sock: string;
  qmp: TestQmpClient;
  [Symbol.asyncDispose](): Promise<void>;
}

async function fixture(): Promise<Fixture> {
  const s = await startQmpDaemon("bg-qmp-");
  return { ...s, sock: `${s.dir}/qmp.sock`, qmp: s.q };
}

/** Holds a node the way a mirror job does, until cancelled. */
class HoldJob extends BlockJob {
  constructor(graph: Graph, node: Node) {
    super({ graph, type: "mirror", node, perm: Perm.CONSISTENT_READ, id: "job0" });
  }
  protected override async run(): Promise<void> {
    while (!this.isCancelled) await this.sleep(1e6);
  }
}

const mem = (name: string, size = 1 << 20) => ({ driver: "memory", "node-name": name, size });

Deno.test("QMP monitor greets, requires qmp_capabilities first, echoes ids", async () => {
  await using f = await fixture();
  const c = await TestQmpClient.connect(f.sock, false);
  try {
    const g = c.greeting.QMP as { version: { qemu: Record<string, number>; package: string } };
    // The QEMU release whose QMP is spoken; blockgraph's own version is the package string.
    assertEquals(g.version.qemu, { micro: 0, minor: 2, major: 7 });
    assertEquals(g.version.package, "blockgraph 0.1.0");
    // qemu-storage-daemon offers oob.
    assertEquals((c.greeting.QMP as { capabilities: unknown[] }).capabilities, ["oob"]);
    assertEquals(await c.fails("query-version"), {
      class: "CommandNotFound",
      desc: "Expecting capabilities negotiation with 'qmp_capabilities'",
    });
    assertEquals(await c.execute("qmp_capabilities", undefined, { a: 1 }), {
      return: {},
      id: { a: 1 },
    });
    assertEquals(await c.fails("qmp_capabilities"), {
      class: "CommandNotFound",
      desc: "Capabilities negotiation is already complete, command ignored",
    });
    const v = await c.execute("query-version", undefined, "x");
    assertEquals(v.id, "x");
    assertEquals((v.return as { package: string }).package, "blockgraph 0.1.0");
    const names = (await c.ok("query-commands") as { name: string }[]).map((n) => n.name);
    for (
      const n of [
        "blockdev-add",
        "blockdev-del",
        "blockdev-reopen",
        "query-named-block-nodes",
        "query-block",
        "x-debug-query-block-graph",
        "blockdev-open-tray",
        "blockdev-close-tray",
        "blockdev-insert-medium",
        "blockdev-remove-medium",
        "blockdev-change-medium",
        "eject",
        "block_resize",
        "nbd-server-start",
        "nbd-server-stop",
        "block-export-add",
        "block-export-del",
        "query-block-exports",
        "quit",
      ]
    ) assert(names.includes(n), n);
  } finally {
    await c.close();
  }
});

Deno.test("QMP monitor: the oob capability as qemu-storage-daemon 7.2 has it (no command runs out of band)", async () => {
  await using f = await fixture();
  const c = await TestQmpClient.connect(f.sock, false);
  try {
    assertEquals(await c.fails("qmp_capabilities", { enable: ["bogus"] }), {
      class: "GenericError",
      desc: "Parameter 'null' does not accept value 'bogus'",
    });
    await c.sendRaw('{"exec-oob": "query-version"}\n');
    assertEquals((await c.reply()).error, {
      class: "GenericError",
      desc: "QMP input member 'exec-oob' is unexpected",
    });
    assertEquals(await c.ok("qmp_capabilities", { enable: ["oob"] }), {});
    await c.sendRaw('{"exec-oob": "query-version", "id": "o1"}\n');
    const r = await c.reply();
    assertEquals([r.id, r.error], ["o1", {
      class: "GenericError",
      desc: "The command query-version does not support OOB",
    }]);
    await c.sendRaw('{"exec-oob": "nosuch"}\n');
    assertEquals((await c.reply()).error, {
      class: "CommandNotFound",
      desc: "The command nosuch has not been found",
    });
    await c.sendRaw('{"exec-oob": "quit", "execute": "quit"}\n');
    assertEquals((await c.reply()).error, {
      class: "GenericError",
      desc: "QMP input member 'execute' clashes with 'exec-oob'",
    });
    assert("return" in await c.execute("query-version"));
  } finally {
    await c.close();
  }
});

Deno.test("QMP monitor answers bad JSON and bad input in QEMU's words and keeps serving", async () => {
  await using f = await fixture();
  const q = f.qmp;
  const cases: [string, string][] = [
    ["{bad}", "JSON parse error, invalid keyword 'bad'"],
    ['{"a":}', "JSON parse error, expecting value"],
    ["}", "JSON parse error, expecting value"],
    ['{"a" 1}', "JSON parse error, missing : in object pair"],
    ['{"a":1 "b":2}', "JSON parse error, expected separator in dict"],
    ["{1:2}", "JSON parse error, key is not a string in object"],
    ["[1 2]", "JSON parse error, expected separator in list"],
    ["@", "JSON parse error, stray '@'"],
    ['{"a":"\\q"}', "JSON parse error, invalid escape sequence in string"],
    ["[1]", "QMP input must be a JSON object"],
    ['"str"', "QMP input must be a JSON object"],
    ['{"foo":1}', "QMP input member 'foo' is unexpected"],
    ['{"execute":1}', "QMP input member 'execute' must be a string"],
    ['{"execute":"query-version","arguments":3}', "QMP input member 'arguments' must be an object"],
    ['{"execute":"query-version","arguments":{"x":1}}', "Parameter 'x' is unexpected"],
    ['{"id":1}', "QMP input lacks member 'execute'"],
    ['{"execute":"blockdev-del"}', "Parameter 'node-name' is missing"],
    [
      '{"execute":"blockdev-del","arguments":{"node-name":5}}',
      "Invalid parameter type for 'node-name', expected: string",
    ],
  ];
  for (const [text, desc] of cases) {
    await q.sendRaw(text + "\n");
    const r = await q.reply();
    assertEquals(r.error, { class: "GenericError", desc }, text);
  }
  assertEquals(await q.fails("nope"), {
    class: "CommandNotFound",
    desc: "The command nope has not been found",
  });
  // Two commands on one line, one split across writes, single quotes: all answered in order.
  await q.sendRaw('{"execute":"query-version"} {"execute":"query-version","id":2}\n');
  assertEquals((await q.reply()).id, undefined);
  assertEquals((await q.reply()).id, 2);
  await q.sendRaw('{"execute": "query-');
  await q.sendRaw("version\", 'id': 'split'}\n");
  assertEquals((await q.reply()).id, "split");
  assert("return" in await q.execute("query-version"));
});

Deno.test("QMP monitor serves several clients; events go to negotiated ones only", async () => {
  await using f = await fixture();
  await applyAction(f.daemon, { kind: "drive", text: "", options: { id: "cd0" } });
  const other = await TestQmpClient.connect(f.sock);
  const fresh = await TestQmpClient.connect(f.sock, false);
  try {
    await f.qmp.ok("blockdev-open-tray", { id: "cd0" });
    const e = await other.waitEvent("DEVICE_TRAY_MOVED");
    assertEquals(e.data, { device: "", id: "cd0", "tray-open": true });
    const ts = e.timestamp as { seconds: number; microseconds: number };
    assert(Math.abs(ts.seconds - Date.now() / 1000) < 60 && ts.microseconds < 1e6);
    assertEquals(Object.keys(e), ["timestamp", "event", "data"]);
    assert("return" in await fresh.execute("qmp_capabilities"));
    assertEquals(fresh.events, []);
    assert("return" in await other.execute("query-block"));
  } finally {
    await other.close();
    await fresh.close();
  }
});

Deno.test("blockdev-add and blockdev-del with QEMU's checks and messages", async () => {
  await using f = await fixture();
  const q = f.qmp;
  assertEquals(await q.fails("blockdev-add", { driver: "memory", size: 65536 }), {
    class: "GenericError",
    desc: "'node-name' must be specified for the root node",
  });
  assertEquals(
    (await q.fails("blockdev-add", { driver: "nope", "node-name": "x" })).desc,
    "Parameter 'driver' does not accept value 'nope'",
  );
  assertEquals(
    (await q.fails("blockdev-add", { "node-name": "x" })).desc,
    "Parameter 'driver' is missing",
  );
  await q.ok("blockdev-add", mem("m0"));
  await q.ok("blockdev-add", { driver: "raw", "node-name": "r0", file: "m0" });
  await q.ok("blockdev-add", { driver: "raw", "node-name": "r1", file: mem("f1") });
  assertEquals(
    (await q.fails("blockdev-add", mem("r0"))).desc,
    "Duplicate nodes with node-name='r0'",
  );
  assertEquals(
    (await q.fails("blockdev-del", { "node-name": "zz" })).desc,
    "Failed to find node with node-name='zz'",
  );
  assertEquals(
    (await q.fails("blockdev-del", { "node-name": "m0" })).desc,
    "Block device m0 is in use",
  );
  assertEquals(
    (await q.fails("blockdev-del", { "node-name": "f1" })).desc,
    "Node f1 is not owned by the monitor",
  );
  // A Backend (a drive) above the node.
  await applyAction(f.daemon, {
    kind: "drive",
    text: "",
    options: { id: "d0", "node-name": "r1", removable: "off", "read-only": "on" },
  });
  assertEquals((await q.fails("blockdev-del", { "node-name": "r1" })).desc, "Node r1 is in use");
  // A block job on the node.
  const job = new HoldJob(f.daemon.graph, f.daemon.graph.findNode("r0")!);
  job.start();
  assertEquals(
    (await q.fails("blockdev-del", { "node-name": "r0" })).desc,
    "Node 'r0' is busy: block device is in use by block job: mirror",
  );
  await job.cancelAndWait();
  await q.ok("blockdev-del", { "node-name": "r0" });
  await q.ok("blockdev-del", { "node-name": "m0" });
  assertEquals(f.daemon.graph.findNode("m0"), undefined);
});

Deno.test("query-named-block-nodes, query-block and x-debug-query-block-graph", async () => {
  await using f = await fixture();
  const q = f.qmp;
  await q.ok("blockdev-add", mem("m0", 65536));
  await q.ok("blockdev-add", { driver: "raw", "node-name": "r0", file: "m0", "read-only": true });
  await applyAction(f.daemon, {
    kind: "drive",
    text: "",
    options: { id: "cd0", name: "drv0", "node-name": "r0" },
  });
  const nodes = await q.ok("query-named-block-nodes", { flat: true }) as Record<string, unknown>[];
  assertEquals(nodes.map((n) => n["node-name"]), ["r0", "m0"]);
  const r0 = nodes[0]!;
  assertEquals([r0.drv, r0.ro, r0.backing_file_depth, r0.detect_zeroes], ["raw", true, 0, "off"]);
  assertEquals((r0.image as Record<string, unknown>)["virtual-size"], 65536);
  assertEquals((r0.image as Record<string, unknown>).format, "raw");
  const blocks = await q.ok("query-block") as Record<string, unknown>[];
  assertEquals(blocks.length, 1);
  const b = blocks[0]!;
  assertEquals(
    [b.device, b.qdev, b.removable, b.locked, b.tray_open, b["io-status"]],
    ["drv0", "cd0", true, false, false, "ok"],
  );
  assertEquals((b.inserted as Record<string, unknown>)["node-name"], "r0");
  const g = await q.ok("x-debug-query-block-graph") as {
    nodes: { id: number; type: string; name: string }[];
    edges: {
      parent: number;
      child: number;
      name: string;
      perm: string[];
      "shared-perm": string[];
    }[];
  };
  const byName = (n: string) => g.nodes.find((x) => x.name === n)!;
  assertEquals(byName("drv0").type, "block-backend");
  assertEquals(byName("r0").type, "block-driver");
  const root = g.edges.find((e) => e.name === "root")!;
  assertEquals([root.parent, root.child], [byName("drv0").id, byName("r0").id]);
  assertEquals(root.perm, ["consistent-read"]);
  assertEquals(root["shared-perm"], ["resize", "write-unchanged", "write", "consistent-read"]);
  const file = g.edges.find((e) => e.name === "file")!;
  assertEquals([file.parent, file.child], [byName("r0").id, byName("m0").id]);
});

Deno.test("blockdev-add checks QEMU 7.2's BlockdevOptions schema before opening anything", async () => {
  await using f = await fixture();
  const q = f.qmp;
  const cases: [Record<string, unknown>, string][] = [
    [{ driver: "file" }, "Parameter 'filename' is missing"],
    [
      { driver: "file", "node-name": "f", filename: 5 },
      "Invalid parameter type for 'filename', expected: string",
    ],
    [
      { driver: "file", "node-name": "f", filename: "x", bogus: 1 },
      "Parameter 'bogus' is unexpected",
    ],
    [
      { driver: "file", "node-name": "f", filename: "x", discard: "on" },
      "Parameter 'discard' does not accept value 'on'",
    ],
    [
      { driver: "file", "node-name": "f", filename: "x", cache: { direct: 1 } },
      "Invalid parameter type for 'cache.direct', expected: boolean",
    ],
    [
      { driver: "file", "node-name": 5, filename: "x" },
      "Invalid parameter type for 'node-name', expected: string",
    ],
    [{ driver: "qcow2", "node-name": "q" }, "Parameter 'file' is missing"],
    [
      { driver: "qcow2", "node-name": "q", file: 5 },
      "Invalid parameter type for 'file', expected: BlockdevRef",
    ],
    [
      { driver: "qcow2", "node-name": "q", file: { driver: "file" } },
      "Parameter 'file.filename' is missing",
    ],
    [
      { driver: "qcow2", "node-name": "q", file: { filename: "x" } },
      "Parameter 'file.driver' is missing",
    ],
    [
      { driver: "raw", "node-name": "r", file: "m0", offset: "1" },
      "Invalid parameter type for 'offset', expected: integer",
    ],
    [
      { driver: "null-co", "node-name": "n", "latency-ns": "1" },
      "Parameter 'latency-ns' expects uint64",
    ],
    [{ driver: "nbd", "node-name": "n" }, "Parameter 'server' is missing"],
  ];
  for (const [args, desc] of cases) {
    assertEquals((await q.fails("blockdev-add", args)).desc, desc, JSON.stringify(args));
  }
  assertEquals(f.daemon.graph.nodes().length, 0);
});

Deno.test("blockdev-reopen changes read-only and refuses what QEMU refuses", async () => {
  await using f = await fixture();
  const q = f.qmp;
  await q.ok("blockdev-add", mem("m0"));
  await q.ok("blockdev-add", { driver: "raw", "node-name": "r0", file: "m0" });
  await q.ok("blockdev-reopen", {
    options: [{ driver: "raw", "node-name": "r0", file: "m0", "read-only": true }],
  });
  assertEquals(f.daemon.graph.findNode("r0")!.flags.readOnly, true);
  await q.ok("blockdev-reopen", { options: [{ driver: "raw", "node-name": "r0", file: "m0" }] });
  assertEquals(f.daemon.graph.findNode("r0")!.flags.readOnly, false);
  assertEquals(
    (await q.fails("blockdev-reopen", { options: [{ driver: "raw", file: "m0" }] })).desc,
    "node-name not specified",
  );
  assertEquals(
    (await q.fails("blockdev-reopen", {
      options: [{ driver: "raw", "node-name": "zz", file: "m0" }],
    })).desc,
    "Failed to find node with node-name='zz'",
  );
  // QEMU checks the BlockdevOptions schema first, with the list position in the names.
  assertEquals(
    (await q.fails("blockdev-reopen", { options: [{ driver: "raw", "node-name": "zz" }] })).desc,
    "Parameter 'options[0].file' is missing",
  );
  assertEquals(
    (await q.fails("blockdev-reopen", {
      options: [{ driver: "raw", "node-name": "r0", file: "m0", bogus: 1 }],
    })).desc,
    "Parameter 'options[0].bogus' is unexpected",
  );
  assertEquals(
    (await q.fails("blockdev-reopen", { options: [{ "node-name": "r0" }] })).desc,
    "Parameter 'options[0].driver' is missing",
  );
  assertEquals(
    (await q.fails("blockdev-reopen", { options: [{ driver: "null-co", "node-name": "r0" }] }))
      .desc,
    "Cannot change the option 'driver'",
  );
  await q.ok("blockdev-reopen", { options: [] });
});

Deno.test("block_resize grows a node by node-name or device, with QEMU's lookup errors", async () => {
  await using f = await fixture();
  const q = f.qmp;
  await q.ok("blockdev-add", mem("m0", 65536));
  await q.ok("block_resize", { "node-name": "m0", size: 131072 });
  assertEquals(f.daemon.graph.findNode("m0")!.getLength(), 131072);
  await applyAction(f.daemon, {
    kind: "drive",
    text: "",
    options: { id: "d0", name: "drv0", "node-name": "m0", removable: "off" },
  });
  await q.ok("block_resize", { device: "drv0", size: 262144 });
  assertEquals(f.daemon.graph.findNode("m0")!.getLength(), 262144);
  assertEquals(
    (await q.fails("block_resize", { "node-name": "m0", size: -1 })).desc,
    "Parameter 'size' expects a >0 size",
  );
  assertEquals(
    (await q.fails("block_resize", { "node-name": "zz", size: 1 })).desc,
    "Cannot find device='' nor node-name='zz'",
  );
  // Beyond int64 a JSON number is no integer to QEMU, whatever it spells.
  for (const size of [1e30, 2 ** 64 - 1, 2 ** 63]) {
    assertEquals(
      (await q.fails("block_resize", { "node-name": "zz", size })).desc,
      "Invalid parameter type for 'size', expected: integer",
    );
  }
  assertEquals(
    (await q.fails("block_resize", { device: "zz", size: 1 })).desc,
    "Cannot find device='zz' nor node-name=''",
  );
  await q.ok("blockdev-add", { driver: "null-co", "node-name": "n0" });
  assertEquals(
    (await q.fails("block_resize", { "node-name": "n0", size: 4096 })).desc,
    "Image format driver does not support resize",
  );
});

Deno.test("quit answers, then the daemon shuts down: jobs cancelled, every node closed", async () => {
  const dir = await Deno.makeTempDir({ prefix: "bg-qmp-" });
  const daemon = createDaemon();
  addMonitor(daemon, `${dir}/qmp.sock`);
  const q = await TestQmpClient.connect(`${dir}/qmp.sock`);
  try {
    await q.ok("blockdev-add", mem("m0"));
    const job = new HoldJob(daemon.graph, daemon.graph.findNode("m0")!);
    job.start();
    assertEquals(await q.execute("quit", undefined, 7), { return: {}, id: 7 });
    await daemon.quitRequested;
    await daemon.shutdown();
    assertEquals(job.status, "null");
    assertEquals(daemon.graph.nodes(), []);
    assert(daemon.graph.closed);
    await q.close();
    await assertRejectsNotFound(`${dir}/qmp.sock`);
  } finally {
    await q.close();
    await daemon.shutdown();
    await Deno.remove(dir, { recursive: true });
  }
});

async function assertRejectsNotFound(path: string): Promise<void> {
  try {
    await Deno.lstat(path);
  } catch (e) {
    assert(e instanceof Deno.errors.NotFound);
    return;
  }
  throw new Error(`${path} still exists`);
}

/** A protocol whose writes fail with EIO (reads return zeros). */
const failingDriver: BlockDriver = {
  name: "failing",
  kind: "protocol",
  options: { size: { type: "size", description: "size" } },
  open: (_ctx, o) =>
    Promise.resolve({
      getLength: () => o.size as number,
      preadv: () => Promise.resolve(),
      pwritev: () => Promise.reject(new BlockError("EIO", "Input/output error")),
      close: () => Promise.resolve(),
    }),
};

Deno.test("block layer events reach QMP clients: BLOCK_IO_ERROR, BLOCK_IMAGE_CORRUPTED", async () => {
  const dir = await Deno.makeTempDir({ prefix: "bg-qmp-" });
  const registry = new DriverRegistry([...defaultRegistry().all(), failingDriver]);
  const daemon = createDaemon(new Graph({ registry }));
  addMonitor(daemon, `${dir}/qmp.sock`);
  const q = await TestQmpClient.connect(`${dir}/qmp.sock`);
  try {
    await q.ok("blockdev-add", { driver: "failing", "node-name": "bad0", size: 65536 });
    await applyAction(daemon, {
      kind: "drive",
      text: "",
      options: {
        id: "hd0",
        name: "drv0",
        "node-name": "bad0",
        removable: "off",
        "read-only": "off",
      },
    });
    const b = daemon.drives.get("hd0")!.backend;
    await b.write(0, new Uint8Array(512)).then(
      () => assert(false, "write should fail"),
      (e) => assertEquals((e as BlockError).code, "EIO"),
    );
    const e = await q.waitEvent("BLOCK_IO_ERROR");
    assertEquals(e.data, {
      device: "drv0",
      "qom-path": "hd0",
      operation: "write",
      action: "report",
      reason: "Input/output error",
      "node-name": "bad0",
    });
    daemon.graph.events.emit("BLOCK_IMAGE_CORRUPTED", {
      device: "",
      "node-name": "bad0",
      msg: "Preventing invalid write on metadata",
      fatal: true,
    });
    assertEquals((await q.waitEvent("BLOCK_IMAGE_CORRUPTED")).data, {
      device: "",
      "node-name": "bad0",
      msg: "Preventing invalid write on metadata",
      fatal: true,
    });
  } finally {
    await q.close();
    await daemon.shutdown();
    await Deno.remove(dir, { recursive: true });
  }
});
