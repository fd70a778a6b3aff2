import { deepStrictEqual as assertEquals, ok as assert } from "node:assert";
import { Graph } from "@blockgraph/core";
import { defaultRegistry } from "@blockgraph/drivers";
import { startQmpDaemon } from "./testing_qmp_daemon.ts";

async function setup() {
  const s = await startQmpDaemon("bg-nbd-");
  const { q } = s;
  await q.ok("blockdev-add", { driver: "memory", "node-name": "m0", size: 1 << 20 });
  return s;
}

Deno.test("nbd-server-start/-stop: legacy and flat addresses, QEMU's refusals", async () => {
  await using s = await setup();
  const q = s.q;
  assertEquals((await q.fails("nbd-server-stop")).desc, "NBD server not running");
  assertEquals(
    (await q.fails("block-export-add", { type: "nbd", id: "e0", "node-name": "m0" })).desc,
    "NBD server not running",
  );
  assertEquals((await q.fails("nbd-server-start", {})).desc, "Parameter 'addr' is missing");
  assertEquals(
    (await q.fails("nbd-server-start", { addr: { type: "unix" } })).desc,
    "Parameter 'addr.data' is missing",
  );
  assertEquals(
    (await q.fails("nbd-server-start", { addr: { type: "tcp", data: {} } })).desc,
    "Parameter 'type' does not accept value 'tcp'",
  );
  assertEquals(
    (await q.fails("nbd-server-start", { addr: { type: "inet", data: { host: "127.0.0.1" } } }))
      .desc,
    "Parameter 'addr.data.port' is missing",
  );
  assertEquals(
    (await q.fails("nbd-server-start", {
      addr: { type: "unix", data: { path: `${s.dir}/n.sock` } },
      "tls-creds": "tls0",
    })).desc,
    "No TLS credentials with id 'tls0'",
  );
  // max-connections is a uint32 and addr.data.to a uint16: QEMU's unsigned visitor messages.
  const unix = { type: "unix", data: { path: `${s.dir}/n.sock` } };
  for (
    const [n, desc] of [
      [-1, "Parameter 'max-connections' expects uint32_t"],
      [2 ** 32, "Parameter 'max-connections' expects uint32_t"],
      ["2", "Parameter 'max-connections' expects uint64"],
      [true, "Parameter 'max-connections' expects uint64"],
      [1.5, "Parameter 'max-connections' expects uint64"],
    ] as const
  ) {
    assertEquals(
      (await q.fails("nbd-server-start", { addr: unix, "max-connections": n })).desc,
      desc,
    );
  }
  assertEquals(
    (await q.fails("nbd-server-start", {
      addr: { type: "inet", data: { host: "127.0.0.1", port: "0", to: -1 } },
    })).desc,
    "Parameter 'to' expects uint16_t",
  );
  await q.ok("nbd-server-start", { addr: unix });
  assert((await Deno.lstat(`${s.dir}/n.sock`)).isSocket);
  assertEquals(
    (await q.fails("nbd-server-start", {
      addr: { type: "inet", data: { host: "127.0.0.1", port: "0" } },
    })).desc,
    "NBD server already running",
  );
  await q.ok("nbd-server-stop");
  // The flat SocketAddress form (as --nbd-server takes it) is accepted too.
  await q.ok("nbd-server-start", { addr: { type: "inet", host: "127.0.0.1", port: "0" } });
  assertEquals(s.daemon.nbd!.address.type, "inet");
  await q.ok("nbd-server-stop");
});

Deno.test("block-export-add/-del: serving a node, BLOCK_EXPORT_DELETED, safe and hard modes", async () => {
  await using s = await setup();
  const q = s.q;
  const path = `${s.dir}/n.sock`;
  await q.ok("nbd-server-start", { addr: { type: "unix", data: { path } } });
  assertEquals(
    (await q.fails("block-export-add", { type: "nbd", id: "e9", "node-name": "zz" })).desc,
    "Cannot find device='' nor node-name='zz'",
  );
  assertEquals(
    (await q.fails("block-export-add", { type: "nbd", id: "e9" })).desc,
    "Parameter 'node-name' is missing",
  );
  assertEquals(
    (await q.fails("block-export-add", { type: "bogus", id: "e9", "node-name": "m0" })).desc,
    "Parameter 'type' does not accept value 'bogus'",
  );
  assertEquals(
    (await q.fails("block-export-add", {
      type: "fuse",
      id: "e9",
      "node-name": "m0",
      mountpoint: s.dir,
    })).desc,
    "No driver found for the requested export type",
  );
  await q.ok("block-export-add", { type: "nbd", id: "e0", "node-name": "m0", writable: true });
  assertEquals(
    (await q.fails("block-export-add", { type: "nbd", id: "e0", "node-name": "m0" })).desc,
    "Block export id 'e0' is already in use",
  );
  assertEquals(
    (await q.fails("block-export-add", { type: "nbd", id: "e1", "node-name": "m0", name: "m0" }))
      .desc,
    "NBD server already has export named 'm0'",
  );
  assertEquals(await q.ok("query-block-exports"), [
    { type: "nbd", id: "e0", "node-name": "m0", "shutting-down": false },
  ]);
  assertEquals((await q.fails("blockdev-del", { "node-name": "m0" })).desc, "Node m0 is in use");
  // query-block skips the export's anonymous Backend, as QEMU does.
  assertEquals(await q.ok("query-block"), []);

  // A real NBD client (our nbd driver) writes through the export.
  const client = new Graph({ registry: defaultRegistry() });
  const node = await client.open({
    driver: "nbd",
    server: { type: "unix", path },
    export: "m0",
  }, "test");
  await node.write(0, new Uint8Array(4096).fill(0x5a));
  const check = new Uint8Array(4096);
  await s.daemon.graph.findNode("m0")!.read(0, check);
  assertEquals(check[4095], 0x5a);

  const desc = (await q.fails("block-export-del", { id: "e0" })).desc;
  assert(desc.startsWith("export 'e0' still in use"), desc);
  assertEquals(
    (await q.fails("block-export-del", { id: "e0", mode: "bogus" })).desc,
    "Parameter 'mode' does not accept value 'bogus'",
  );
  const before = q.events.length;
  await q.ok("block-export-del", { id: "e0", mode: "hard" });
  // The reply comes first, then the event once the export is gone, as in QEMU.
  assertEquals(q.events.slice(before).map((e) => e.event), [], "no event before the reply");
  assertEquals((await q.waitEvent("BLOCK_EXPORT_DELETED", before)).data, { id: "e0" });
  assertEquals((await q.fails("block-export-del", { id: "e0" })).desc, "Export 'e0' is not found");
  assertEquals(await q.ok("query-block-exports"), []);
  await node.unref("test").catch(() => {});
  await client.closeAll().catch(() => {});
  await q.ok("blockdev-del", { "node-name": "m0" });
});

Deno.test("nbd-server-stop deletes the exports (BLOCK_EXPORT_DELETED) and frees the node", async () => {
  await using s = await setup();
  const q = s.q;
  await q.ok("nbd-server-start", {
    addr: { type: "inet", data: { host: "127.0.0.1", port: "0" } },
  });
  await q.ok("block-export-add", { type: "nbd", id: "e0", "node-name": "m0" });
  const before = q.events.length;
  await q.ok("nbd-server-stop");
  assertEquals((await q.waitEvent("BLOCK_EXPORT_DELETED", before)).data, { id: "e0" });
  await q.ok("blockdev-del", { "node-name": "m0" });
});

Deno.test("block-export-add: QEMU 7.2's checks in its order; a refused export emits no event", async () => {
  await using s = await setup();
  const q = s.q;
  await q.ok("blockdev-add", {
    driver: "memory",
    "node-name": "ro0",
    size: 1 << 20,
    "read-only": true,
  });
  const add = async (args: Record<string, unknown>) =>
    (await q.fails("block-export-add", { type: "nbd", ...args })).desc;
  // Before the server runs: the id and the node come first.
  assertEquals(await add({ id: "", "node-name": "m0" }), "Invalid block export id");
  assertEquals(await add({ id: "#e", "node-name": "m0" }), "Invalid block export id");
  assertEquals(
    await add({ id: "e0", "node-name": "zz" }),
    "Cannot find device='' nor node-name='zz'",
  );
  assertEquals(
    await add({ id: "e0", "node-name": "ro0", writable: true }),
    "Cannot export read-only node as writable",
  );
  assertEquals(await add({ id: "e0", "node-name": "m0", iothread: "x" }), 'iothread "x" not found');
  assertEquals(await add({ id: "e0", "node-name": "m0" }), "NBD server not running");
  assertEquals(
    (await q.fails("block-export-add", { type: "fuse", id: "e0", "node-name": "m0" })).desc,
    "Parameter 'mountpoint' is missing",
  );
  assertEquals(
    (await q.fails("block-export-add", { type: "vduse-blk", id: "e0", "node-name": "m0" })).desc,
    "Parameter 'name' is missing",
  );
  assertEquals(
    await add({ id: "e0", "node-name": "m0", description: "x".repeat(4097) }),
    "NBD server not running",
  );

  await q.ok("nbd-server-start", { addr: { type: "unix", data: { path: `${s.dir}/n.sock` } } });
  assertEquals(
    await add({ id: "e0", "node-name": "m0", description: "x".repeat(4097) }),
    `description '${"x".repeat(4097)}' too long`,
  );
  assertEquals(
    await add({ id: "e0", "node-name": "m0", name: "n".repeat(4097) }),
    `export name '${"n".repeat(4097)}' too long`,
  );
  await q.ok("block-export-add", { type: "nbd", id: "e0", "node-name": "m0" });
  const before = q.events.length;
  assertEquals(
    await add({ id: "e1", "node-name": "ro0", name: "m0" }),
    "NBD server already has export named 'm0'",
  );
  await q.ok("block-export-add", { type: "nbd", id: "e1", "node-name": "ro0" });
  // Newest first, as QEMU lists them.
  assertEquals((await q.ok("query-block-exports") as { id: string }[]).map((e) => e.id), [
    "e1",
    "e0",
  ]);
  await q.ok("query-version");
  assertEquals(q.events.slice(before).map((e) => e.event), []);
});

Deno.test("an exported node cannot be resized: clients learnt its size at the handshake", async () => {
  await using s = await setup();
  const q = s.q;
  await q.ok("nbd-server-start", { addr: { type: "unix", data: { path: `${s.dir}/n.sock` } } });
  await q.ok("block-export-add", { type: "nbd", id: "e0", "node-name": "m0", writable: true });
  const desc = (await q.fails("block_resize", { "node-name": "m0", size: 2 << 20 })).desc;
  assert(desc.startsWith("Permission conflict on node 'm0': permissions 'resize'"), desc);
  assertEquals(s.daemon.graph.findNode("m0")!.getLength(), 1 << 20);
  await q.ok("block-export-del", { id: "e0" });
  await q.waitEvent("BLOCK_EXPORT_DELETED", 0);
  await q.ok("block_resize", { "node-name": "m0", size: 2 << 20 });
});
