import { BlockError, Graph } from "@blockgraph/core";
import { assert, assertEquals } from "../../conformance/mod.ts";
import { defaultRegistry } from "../../mod.ts";

/** A TCP port on 127.0.0.1 that nothing listens on (it was free a moment ago). */
function closedPort(): string {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return String(port);
}

async function openError(graph: Graph, options: Record<string, unknown>): Promise<string> {
  try {
    const node = await graph.open({ driver: "nbd", ...options } as never, "t");
    await node.unref("t");
  } catch (e) {
    assert(e instanceof BlockError, String(e));
    return e.message;
  }
  throw new Error("the open succeeded");
}

Deno.test("nbd driver looks tls-creds up in the graph's objects before it connects", async () => {
  const graph = new Graph({ registry: defaultRegistry() });
  const dir = await Deno.makeTempDir({ prefix: "nbd-driver-" });
  try {
    const server = {
      "server.type": "inet",
      "server.host": "127.0.0.1",
      "server.port": closedPort(),
      export: "disk",
    };
    assertEquals(
      await openError(graph, { ...server, "tls-creds": "tls0" }),
      "No TLS credentials with id 'tls0'",
    );
    graph.objects.add({ "qom-type": "tls-creds-x509", id: "tls0", endpoint: "server", dir });
    assertEquals(
      await openError(graph, { ...server, "tls-creds": "tls0" }),
      "Expected TLS credentials for a client endpoint",
    );
    graph.objects.add({ "qom-type": "secret", id: "s0", data: "x" });
    assertEquals(
      await openError(graph, { ...server, "tls-creds": "s0" }),
      "Object with id 's0' is not TLS credentials",
    );
    // Client credentials that load: now the connection is tried (and refused).
    await Deno.writeTextFile(`${dir}/ca-cert.pem`, "ca\n");
    graph.objects.add({ "qom-type": "tls-creds-x509", id: "tls1", endpoint: "client", dir });
    const refused = await openError(graph, { ...server, "tls-creds": "tls1" });
    assert(/refused/i.test(refused), refused);
    // The shortcut needs no object.
    const viaDir = await openError(graph, { ...server, "tls-creds": "nope", "tls-creds-dir": dir });
    assert(/refused/i.test(viaDir), viaDir);
  } finally {
    await graph.closeAll();
    await Deno.remove(dir, { recursive: true });
  }
});
