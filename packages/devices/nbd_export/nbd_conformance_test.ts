/**
 * The `nbd` protocol driver runs the conformance suite against our own server serving a
 * `memory` node over a unix socket, so both ends of the protocol are checked together.
 */
import { Graph, type Node } from "@blockgraph/core";
import { defaultRegistry, MEMORY_CHUNK_SIZE } from "@blockgraph/drivers";
import { CONFORMANCE_HOLDER, runConformance } from "@blockgraph/drivers/conformance";
import { NbdServer } from "./server.ts";

let served: { graph: Graph; node: Node; server: NbdServer; dir: string } | null = null;

async function serve(): Promise<string> {
  const graph = new Graph({ registry: defaultRegistry() });
  const node = await graph.open(
    { driver: "memory", size: 4 << 20, discard: "unmap", "node-name": "disk" },
    "server",
  );
  const dir = await Deno.makeTempDir({ prefix: "nbd-conformance-" });
  const server = new NbdServer({ addr: { type: "unix", path: `${dir}/nbd.sock` } });
  server.start();
  await server.addExport(graph, { id: "e", "node-name": "disk", name: "disk", writable: true });
  served = { graph, node, server, dir };
  return `${dir}/nbd.sock`;
}

runConformance("nbd", {
  registry: defaultRegistry(),
  capabilities: {
    persistent: true,
    resize: false,
    growsOnWrite: false,
    discardGranularity: MEMORY_CHUNK_SIZE,
  },
  async open(graph, { readOnly }) {
    const path = await serve();
    return graph.open(
      {
        driver: "nbd",
        server: { type: "unix", path },
        export: "disk",
        discard: "unmap",
        "read-only": readOnly,
      },
      CONFORMANCE_HOLDER,
    );
  },
  async cleanup() {
    const s = served;
    served = null;
    if (!s) return;
    await s.server.stop();
    await s.node.unref("server");
    await s.graph.closeAll();
    await Deno.remove(s.dir, { recursive: true });
  },
});
