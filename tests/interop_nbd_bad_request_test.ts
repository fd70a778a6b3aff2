/**
 * Our NBD server against qemu-nbd when a request arrives out of step (its magic is wrong):
 * both must answer EINVAL to the cookie in the garbage (a simple reply, or with structured
 * replies an error chunk saying "invalid magic (got 0x...)") and then end the connection,
 * byte for byte the same.
 *
 * @module
 */

import { Graph } from "@blockgraph/core";
import { defaultRegistry } from "@blockgraph/drivers";
import { assertEquals } from "@blockgraph/drivers/conformance";
import {
  decodeOptionReplyHeader,
  encodeInfoRequest,
  encodeOption,
  Opt,
  Rep,
  WireReader,
  WireWriter,
} from "@blockgraph/drivers/nbd";
import { NbdServer } from "@blockgraph/devices";
import { ensurePeers } from "./peers.ts";
import { freePort, listening, spawnPeer } from "./peer_run.ts";

const SIZE = 1 << 20;

/**
 * Negotiates export `disk` on `port` (old-style EXPORT_NAME, or structured replies and GO),
 * sends a request whose magic is wrong, and returns every byte the server sends after it,
 * as hex, with whether it then closed.
 */
async function afterBadMagic(port: number, structured: boolean): Promise<string> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  const reader = new WireReader(conn);
  const writer = new WireWriter(conn);
  try {
    await reader.readBytes(18);
    writer.copy(new Uint8Array([0, 0, 0, 3]));
    const finish = async () => {
      for (;;) {
        const h = decodeOptionReplyHeader(await reader.readBytes(20));
        await reader.readBytes(h.length);
        if (h.type === Rep.ACK || h.type >= 0x80000000) return h.type;
      }
    };
    if (structured) {
      writer.copy(encodeOption(Opt.STRUCTURED_REPLY));
      assertEquals(await finish(), Rep.ACK, "structured replies");
      writer.copy(encodeOption(Opt.GO, encodeInfoRequest("disk", [])));
      assertEquals(await finish(), Rep.ACK, "GO");
    } else {
      writer.copy(encodeOption(Opt.EXPORT_NAME, new TextEncoder().encode("disk")));
      await reader.readBytes(10);
    }
    const bad = new Uint8Array(28);
    const v = new DataView(bad.buffer);
    v.setUint32(0, 0x12345678);
    v.setUint32(12, 0xabcdef);
    v.setUint32(24, 512);
    writer.copy(bad);
    const got: number[] = [];
    while (await reader.need(1).catch(() => false)) {
      got.push(...reader.buf.subarray(reader.pos, reader.pos + reader.available));
      reader.consume(reader.available);
    }
    return `${got.map((b) => b.toString(16).padStart(2, "0")).join("")} then closed`;
  } finally {
    conn.close();
  }
}

Deno.test("NBD server answers a request with a bad magic as qemu-nbd: EINVAL to its cookie, then closes", async () => {
  await ensurePeers(["qemu-nbd"]);
  const dir = await Deno.makeTempDir({ prefix: "blockgraph-nbd-bad-" });
  const image = `${dir}/disk.raw`;
  await Deno.writeFile(image, new Uint8Array(SIZE));
  const graph = new Graph({ registry: defaultRegistry() });
  const node = await graph.open({ driver: "file", filename: image, "node-name": "disk" }, "t");
  const server = new NbdServer({ addr: { type: "inet", host: "127.0.0.1", port: 0 } });
  server.start();
  const port = freePort();
  const qemuNbd = await spawnPeer(
    "qemu-nbd",
    ["-f", "raw", "-x", "disk", "-b", "127.0.0.1", "-p", String(port), "-t", image],
    () => listening(port),
  );
  try {
    await server.addExport(graph, { id: "e0", "node-name": "disk", name: "disk" });
    const a = server.address;
    const ours = a.type === "inet" ? Number(a.port) : 0;
    for (const structured of [false, true]) {
      assertEquals(
        await afterBadMagic(ours, structured),
        await afterBadMagic(port, structured),
        structured ? "structured replies" : "simple replies",
      );
    }
  } finally {
    await qemuNbd.stop();
    await server.stop();
    await node.unref("t");
    await graph.closeAll();
    await Deno.remove(dir, { recursive: true });
  }
});
