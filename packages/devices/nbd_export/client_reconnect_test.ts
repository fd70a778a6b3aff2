/**
 * Our `nbd` client driver against our server: reconnection within `reconnect-delay`, and EIO
 * once the server is gone for good.
 */
import { type BlockError, Graph, type Node } from "@blockgraph/core";
import { defaultRegistry, type NbdInstance } from "@blockgraph/drivers";
import { assert, assertBytesEqual, assertEquals, pattern } from "@blockgraph/drivers/conformance";
import { withServer } from "./testing_server.ts";

Deno.test("nbd client reconnects within reconnect-delay and requests go through", async () => {
  await withServer(async ({ sock }) => {
    const graph = new Graph({ registry: defaultRegistry() });
    const n = await graph.open(
      { driver: "nbd", server: { type: "unix", path: sock }, export: "disk", "reconnect-delay": 5 },
      "t",
    );
    const client = (n.instance as NbdInstance).client;
    await n.write(0, pattern(4096, 9));
    client.breakConnection();
    const got = new Uint8Array(4096);
    await n.read(0, got);
    assertBytesEqual(got, pattern(4096, 9), "read after the reconnect");
    assert(client.connected, "connected again");
    await n.unref("t");
    await graph.closeAll();
  });
});

Deno.test("nbd client fails requests with EIO once the server is gone", async () => {
  let node: Node | null = null;
  const graph = new Graph({ registry: defaultRegistry() });
  await withServer(async ({ sock, server }) => {
    node = await graph.open(
      { driver: "nbd", server: { type: "unix", path: sock }, export: "disk", "reconnect-delay": 1 },
      "t",
    );
    await server.stop();
  });
  const started = Date.now();
  let code = "";
  await node!.read(0, new Uint8Array(512)).catch((e: BlockError) => (code = e.code));
  assertEquals(code, "EIO", "read without a server");
  assert(Date.now() - started < 3000, "failed within the reconnect delay");
  await node!.unref("t");
  await graph.closeAll();
});
