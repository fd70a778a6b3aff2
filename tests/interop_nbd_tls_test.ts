/**
 * NBD over TLS (NBD_OPT_STARTTLS with x509 certificates made by openssl in a temporary
 * directory): our server with qemu-img, qemu-io and nbdinfo as TLS clients; our client against
 * our server and against qemu-nbd; refusals of plain clients and of clients without a
 * certificate. Loopback only; every peer process has a timeout.
 */
import { BlockError, Graph } from "@blockgraph/core";
import { defaultRegistry } from "@blockgraph/drivers";
import { assert, assertBytesEqual, assertEquals, pattern } from "@blockgraph/drivers/conformance";
import {
  decodeOptionReplyHeader,
  encodeOption,
  loadX509Creds,
  Opt,
  WireReader,
  WireWriter,
} from "@blockgraph/drivers/nbd";
import { NbdServer } from "@blockgraph/devices";
import { ensurePeers } from "./peers.ts";
import { runPeer } from "./peer_run.ts";
import { makeTestPki, spawnTlsQemuNbd, type TestPki } from "./tls_certs.ts";

const SIZE = 4 << 20;

async function withTlsExport(
  fn: (port: number, pki: TestPki, graph: Graph) => Promise<void>,
): Promise<void> {
  await ensurePeers(["qemu-img", "qemu-io", "nbdinfo"]);
  const pki = await makeTestPki();
  const graph = new Graph({ registry: defaultRegistry() });
  const node = await graph.open({ driver: "memory", size: SIZE, "node-name": "disk" }, "test");
  const tlsCreds = await loadX509Creds({ id: "tls0", endpoint: "server", dir: pki.dir });
  const server = new NbdServer({ addr: { type: "inet", host: "127.0.0.1", port: 0 }, tlsCreds });
  server.start();
  try {
    await server.addExport(graph, { id: "e0", "node-name": "disk", name: "disk", writable: true });
    const a = server.address;
    await fn(a.type === "inet" ? Number(a.port) : 0, pki, graph);
  } finally {
    await server.stop();
    await node.unref("test");
    await graph.closeAll();
    await pki.remove();
  }
}

function qemuTlsArgs(dir: string, port: number): string[] {
  return [
    "--object",
    `tls-creds-x509,id=tls0,endpoint=client,dir=${dir}`,
    "--image-opts",
    `driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=${port},export=disk,` +
    "tls-creds=tls0",
  ];
}

Deno.test("NBD server with tls-creds serves qemu-img, qemu-io and nbdinfo over TLS", async () => {
  await withTlsExport(async (port, pki, graph) => {
    const info = await runPeer("qemu-img", [
      "info",
      "--output=json",
      ...qemuTlsArgs(pki.dir, port),
    ]);
    assertEquals(info.code, 0, `qemu-img info over TLS: ${info.err}`);
    assertEquals(JSON.parse(info.out)["virtual-size"], SIZE, "size over TLS");
    const io = await runPeer("qemu-io", [
      "-c",
      "write -P 0x6b 65536 131072",
      "-c",
      "read -P 0x6b 65536 131072",
      ...qemuTlsArgs(pki.dir, port),
    ]);
    assertEquals(io.code, 0, `qemu-io over TLS: ${io.err}${io.out}`);
    assert(!io.out.includes("failed"), io.out);
    const got = new Uint8Array(131072);
    await graph.findNode("disk")!.read(65536, got);
    assertBytesEqual(got, new Uint8Array(131072).fill(0x6b), "written over TLS");
    const nbd = await runPeer("nbdinfo", [
      "--json",
      `nbds://127.0.0.1:${port}/disk?tls-certificates=${pki.dir}`,
    ]);
    assertEquals(nbd.code, 0, `nbdinfo over TLS: ${nbd.err}`);
    const j = JSON.parse(nbd.out);
    assertEquals(j.TLS, true, "nbdinfo negotiated TLS");
    assertEquals(j.exports[0]["export-size"], SIZE, "nbdinfo size");
  });
});

Deno.test("NBD server with tls-creds refuses plain clients and clients without a certificate", async () => {
  await withTlsExport(async (port, pki) => {
    const plain = await runPeer("qemu-img", ["info", `nbd://127.0.0.1:${port}/disk`]);
    assert(plain.code !== 0, "a plain qemu-img is refused");
    assert(/TLS/i.test(plain.err), `the refusal names TLS: ${plain.err}`);
    const list = await runPeer("nbdinfo", ["--list", `nbd://127.0.0.1:${port}`]);
    assert(list.code !== 0, "NBD_OPT_LIST before STARTTLS is refused");
    const bare = await Deno.makeTempDir({ prefix: "blockgraph-pki-bare-" });
    try {
      await Deno.copyFile(`${pki.dir}/ca-cert.pem`, `${bare}/ca-cert.pem`);
      const r = await runPeer("qemu-img", ["info", ...qemuTlsArgs(bare, port)]);
      assert(r.code !== 0, "a client without a certificate is refused (verify-peer)");
    } finally {
      await Deno.remove(bare, { recursive: true });
    }
  });
});

Deno.test("nbd driver with tls-creds-dir reads and writes a TLS export; without TLS it gets EACCES", async () => {
  await withTlsExport(async (port, pki, graph) => {
    const server = {
      driver: "nbd",
      "server.type": "inet",
      "server.host": "127.0.0.1",
      "server.port": String(port),
      export: "disk",
    };
    const client = await graph.open({ ...server, "tls-creds-dir": pki.dir }, "test");
    try {
      await client.write(8192, pattern(65536, 7));
      const back = new Uint8Array(65536);
      await graph.findNode("disk")!.read(8192, back);
      assertBytesEqual(back, pattern(65536, 7), "written by our TLS client");
      const read = new Uint8Array(65536);
      await client.read(8192, read);
      assertBytesEqual(read, pattern(65536, 7), "read by our TLS client");
    } finally {
      await client.unref("test");
    }
    let err: unknown = null;
    try {
      await graph.open(server, "test");
    } catch (e) {
      err = e;
    }
    assert(err instanceof BlockError && err.code === "EACCES", `plain client: ${err}`);
    assert(
      (err as Error).message.startsWith("TLS negotiation required before option"),
      (err as Error).message,
    );
    err = null;
    try {
      await graph.open({ ...server, "tls-creds-dir": pki.dir, "tls-hostname": "elsewhere" }, "t");
    } catch (e) {
      err = e;
    }
    assert(err instanceof BlockError, `a certificate for another host is refused: ${err}`);
  });
});

Deno.test("nbd driver over TLS against qemu-nbd --tls-creds", async () => {
  await ensurePeers(["qemu-nbd", "openssl"]);
  const pki = await makeTestPki();
  const dir = await Deno.makeTempDir({ prefix: "nbd-tls-qemu-" });
  const image = `${dir}/disk.raw`;
  const data = pattern(SIZE, 9);
  await Deno.writeFile(image, data);
  const { port, server: qnbd } = await spawnTlsQemuNbd(pki, image);
  const graph = new Graph({ registry: defaultRegistry() });
  try {
    const node = await graph.open({
      driver: "nbd",
      "server.type": "inet",
      "server.host": "127.0.0.1",
      "server.port": String(port),
      export: "disk",
      "tls-creds": "tls0",
      "tls-creds-dir": pki.dir,
      "read-only": true,
    }, "test");
    const got = new Uint8Array(1 << 20);
    await node.read(1 << 20, got);
    assertBytesEqual(got, data.subarray(1 << 20, 2 << 20), "read from qemu-nbd over TLS");
    await node.unref("test");
  } finally {
    await graph.closeAll();
    await qnbd.stop();
    await pki.remove();
    await Deno.remove(dir, { recursive: true });
  }
});

/**
 * What a server with TLS answers a plain client's options before STARTTLS: each option's
 * reply (type and message) and whether the connection then ends.
 */
async function beforeTls(port: number): Promise<string[]> {
  const conn = await Deno.connect({ hostname: "127.0.0.1", port });
  const reader = new WireReader(conn);
  const writer = new WireWriter(conn);
  const seen: string[] = [];
  try {
    await reader.readBytes(18);
    writer.copy(new Uint8Array([0, 0, 0, 3]));
    for (const option of [Opt.LIST, Opt.INFO, 99, Opt.ABORT]) {
      writer.copy(encodeOption(option));
      const h = decodeOptionReplyHeader(await reader.readBytes(20));
      const text = new TextDecoder().decode(await reader.readBytes(h.length));
      seen.push(`${option}: ${h.type.toString(16)} ${text}`);
    }
    seen.push(`closed: ${!(await reader.need(1).catch(() => false))}`);
  } finally {
    conn.close();
  }
  return seen;
}

Deno.test("NBD server with tls-creds answers options before STARTTLS as qemu-nbd --tls-creds, ABORT included", async () => {
  await withTlsExport(async (port, pki) => {
    const mine = await beforeTls(port);
    const image = `${pki.dir}/disk.raw`;
    await Deno.writeFile(image, new Uint8Array(SIZE));
    const q = await spawnTlsQemuNbd(pki, image);
    try {
      assertEquals(mine.join("\n"), (await beforeTls(q.port)).join("\n"), "replies before TLS");
    } finally {
      await q.server.stop();
    }
  });
});
