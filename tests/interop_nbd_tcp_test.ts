/**
 * Our NBD server over TCP never stalls on pipelined batches: qemu-img bench at depth 32 over
 * loopback must not wait on Nagle's algorithm and the client's delayed ACK (about 40 ms per
 * batch, QEMU 7.2's qemu-nbd's 363 IOPS), which TCP_NODELAY on accepted sockets prevents.
 */
import { Graph } from "@blockgraph/core";
import { defaultRegistry } from "@blockgraph/drivers";
import { assert, assertEquals } from "@blockgraph/drivers/conformance";
import { NbdServer } from "@blockgraph/devices";
import { ensurePeers } from "./peers.ts";
import { runPeer } from "./peer_run.ts";

Deno.test("NBD server over TCP answers pipelined 4 KiB reads without a delayed-ACK stall", async () => {
  await ensurePeers(["qemu-img"]);
  const graph = new Graph({ registry: defaultRegistry() });
  const node = await graph.open({ driver: "memory", size: 64 << 20, "node-name": "d" }, "t");
  const server = new NbdServer({ addr: { type: "inet", host: "127.0.0.1", port: 0 } });
  server.start();
  try {
    await server.addExport(graph, { id: "e0", "node-name": "d", name: "d" });
    const a = server.address;
    const port = a.type === "inet" ? a.port : 0;
    const count = 6400;
    const r = await runPeer("qemu-img", [
      "bench",
      "--image-opts",
      "-c",
      String(count),
      "-d",
      "32",
      "-s",
      "4096",
      `driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=${port},export=d`,
    ]);
    assertEquals(r.code, 0, r.err);
    const seconds = Number(/Run completed in ([\d.]+) seconds/.exec(r.out)?.[1]);
    // 200 batches: stalls on even a share of them cost seconds; without, about 0.1 s.
    assert(seconds < 0.5, `${count} reads at depth 32 took ${seconds} s`);
  } finally {
    await server.stop();
    await node.unref("t");
    await graph.closeAll();
  }
});
