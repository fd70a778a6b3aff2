/**
 * NBD interop: our server with qemu-io, qemu-img (info, convert), nbdinfo --map and nbdcopy;
 * our client against qemu-nbd serving a raw file. Loopback TCP and unix sockets in temporary
 * directories only; every peer process has a timeout.
 */
import { Graph, type Node } from "@blockgraph/core";
import { defaultRegistry } from "@blockgraph/drivers";
import { assert, assertBytesEqual, assertEquals, pattern } from "@blockgraph/drivers/conformance";
import { NbdServer, type NbdServerAddress } from "@blockgraph/devices";
import { cachestatAvailable, hostSendCounters } from "@blockgraph/drivers/nbd";
import { ensurePeers } from "./peers.ts";
import { mustPeer, PEER_TIMEOUT_MS, runPeer } from "./peer_run.ts";

const SIZE = 16 << 20;

/** Starts a server on `addr` exporting node `disk` of `graph` as `disk`; it and its URI. */
async function serveDisk(
  graph: Graph,
  addr: NbdServerAddress,
  writable: boolean,
  allocationDepth = false,
): Promise<{ server: NbdServer; uri: string }> {
  const server = new NbdServer({ addr });
  server.start();
  const exp = { id: "e0", "node-name": "disk", name: "disk", writable };
  await server.addExport(graph, allocationDepth ? { ...exp, "allocation-depth": true } : exp);
  const a = server.address;
  assert(a.type === "unix" || Number(a.port) > 0, "bound to a port");
  const uri = a.type === "inet"
    ? `nbd://127.0.0.1:${a.port}/disk`
    : `nbd+unix:///disk?socket=${a.path}`;
  return { server, uri };
}
async function withExport(
  fn: (uri: string, node: Node, dir: string) => Promise<void>,
): Promise<void> {
  await ensurePeers(["qemu-io", "qemu-img", "qemu-nbd", "nbdinfo", "nbdcopy"]);
  const graph = new Graph({ registry: defaultRegistry() });
  const node = await graph.open(
    { driver: "memory", size: SIZE, discard: "unmap", "node-name": "disk" },
    "test",
  );
  const dir = await Deno.makeTempDir({ prefix: "nbd-interop-" });
  const { server, uri } = await serveDisk(
    graph,
    { type: "inet", host: "127.0.0.1", port: 0 },
    true,
    true,
  );
  try {
    await fn(uri, node, dir);
  } finally {
    await server.stop();
    await node.unref("test");
    await graph.closeAll();
    await Deno.remove(dir, { recursive: true });
  }
}

const c = (...cmds: string[]) => cmds.flatMap((x) => ["-c", x]);

Deno.test("qemu-io reads, writes, zeroes and discards through our NBD server", async () => {
  await withExport(async (uri, node) => {
    await mustPeer("qemu-io", [
      "-f",
      "raw",
      ...c(
        "write -P 0x5a 4096 65536",
        "write -f -P 0x11 1048576 4096",
        "write -z 2097152 1048576",
        "aio_write -P 0x22 5000 3",
        "aio_flush",
        "discard 8388608 1048576",
      ),
      uri,
    ]);
    const got = new Uint8Array(65536);
    await node.read(4096, got);
    assertBytesEqual(got.subarray(0, 904), new Uint8Array(904).fill(0x5a), "written by qemu-io");
    assertBytesEqual(got.subarray(904, 907), new Uint8Array(3).fill(0x22), "aio write");
    await node.write(3 << 20, pattern(4096, 1));
    await mustPeer("qemu-io", [
      "-f",
      "raw",
      ...c("read -P 0x11 1048576 4096", "read -P 0 2097152 1048576", "read -P 0 0 4096"),
      uri,
    ]);
    const r = await runPeer("qemu-io", ["-f", "raw", ...c("read -P 0x33 1048576 4096"), uri]);
    assert(r.out.includes("Pattern verification failed"), `a wrong pattern is caught: ${r.out}`);
  });
});

Deno.test("qemu-img info and convert of our NBD export", async () => {
  await withExport(async (uri, node, dir) => {
    await node.write(5 << 20, pattern(100000, 2));
    const info = JSON.parse(await mustPeer("qemu-img", ["info", "--output=json", uri]));
    assertEquals(info["virtual-size"], SIZE, "virtual size");
    await mustPeer("qemu-img", ["convert", "-f", "raw", "-O", "raw", uri, `${dir}/copy.raw`]);
    const copy = await Deno.readFile(`${dir}/copy.raw`);
    assertEquals(copy.length, SIZE, "copy size");
    assertBytesEqual(copy.subarray(5 << 20, (5 << 20) + 100000), pattern(100000, 2), "copied data");
    assertBytesEqual(copy.subarray(0, 4096), new Uint8Array(4096), "copied zeros");
    await mustPeer("qemu-img", ["convert", "-n", "-f", "raw", "-O", "raw", `${dir}/copy.raw`, uri]);
  });
});

Deno.test("nbdinfo --map agrees with what was written; nbdcopy copies the export", async () => {
  await withExport(async (uri, node, dir) => {
    await node.write(1 << 20, pattern(2 << 20, 3));
    const map = JSON.parse(await mustPeer("nbdinfo", ["--json", "--map", uri]));
    const data = map.filter((e: { type: number }) => (e.type & 1) === 0);
    assertEquals(
      JSON.stringify(data.map((e: { offset: number; length: number }) => [e.offset, e.length])),
      JSON.stringify([[1 << 20, 2 << 20]]),
      "the one data extent",
    );
    const total = map.reduce((n: number, e: { length: number }) => n + e.length, 0);
    assertEquals(total, SIZE, "extents cover the export");
    const depth = await mustPeer("nbdinfo", ["--map=qemu:allocation-depth", uri]);
    assert(depth.includes("local"), `allocation depth: ${depth}`);
    await mustPeer("nbdcopy", [uri, `${dir}/out.raw`]);
    const out = await Deno.readFile(`${dir}/out.raw`);
    assertBytesEqual(out.subarray(1 << 20, 3 << 20), pattern(2 << 20, 3), "nbdcopy data");
    await Deno.writeFile(`${dir}/in.raw`, pattern(SIZE, 4));
    await mustPeer("nbdcopy", [`${dir}/in.raw`, uri]);
    const back = new Uint8Array(65536);
    await node.read(SIZE - 65536, back);
    assertBytesEqual(back, pattern(SIZE, 4).subarray(SIZE - 65536), "nbdcopy into the export");
  });
});

Deno.test("our nbd client against qemu-nbd: read, write, zeroes, trim, block status", async () => {
  await ensurePeers(["qemu-nbd", "qemu-img"]);
  const dir = await Deno.makeTempDir({ prefix: "nbd-client-" });
  const img = `${dir}/disk.raw`;
  const sock = `${dir}/nbd.sock`;
  await mustPeer("qemu-img", ["create", "-q", "-f", "raw", img, String(SIZE)]);
  const qemuNbd = new Deno.Command("qemu-nbd", {
    args: ["-f", "raw", "-k", sock, "-x", "disk", "-t", "--discard=unmap", img],
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const graph = new Graph({ registry: defaultRegistry() });
  try {
    const deadline = Date.now() + PEER_TIMEOUT_MS;
    while (!(await Deno.stat(sock).then(() => true, () => false))) {
      assert(Date.now() < deadline, "qemu-nbd did not start");
      await new Promise((r) => setTimeout(r, 20));
    }
    const n = await graph.open({ filename: `nbd+unix:///disk?socket=${sock}` }, "t");
    assertEquals(n.getLength(), SIZE, "size from the handshake");
    await n.write(4097, pattern(70000, 5));
    await n.write(1 << 20, pattern(4096, 6), 0x10);
    const got = new Uint8Array(70002);
    await n.read(4096, got);
    assertBytesEqual(got.subarray(1, 70001), pattern(70000, 5), "read back");
    await n.pwriteZeroes(8192, 4096);
    await n.read(8192, got.subarray(0, 4096));
    assertBytesEqual(got.subarray(0, 4096), new Uint8Array(4096), "zeroed");
    await n.pdiscard(4 << 20, 1 << 20);
    await n.flush();
    const hole = await n.blockStatus(8 << 20, 1 << 20);
    assert(hole.status & 2, `unwritten range reads as zero (status ${hole.status})`);
    const data = await n.blockStatus(1 << 20, 4096);
    assert(data.status & 1, `written range is data (status ${data.status})`);
    await n.unref("t");
    await graph.closeAll();
    const file = await Deno.readFile(img);
    assertBytesEqual(file.subarray(4097, 8192), pattern(70000, 5).subarray(0, 4095), "in the file");
    assertBytesEqual(file.subarray(1 << 20, (1 << 20) + 4096), pattern(4096, 6), "FUA write");
  } finally {
    try {
      qemuNbd.kill("SIGTERM");
    } catch {
      // It already exited.
    }
    await qemuNbd.output();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("large reads of a file export go out with sendfile over TCP and unix, as qemu-img, qemu-io and nbdcopy check", async () => {
  await ensurePeers(["qemu-io", "qemu-img", "nbdcopy"]);
  const dir = await Deno.makeTempDir({ prefix: "nbd-sendfile-" });
  const img = `${dir}/disk.raw`;
  const whole = pattern(SIZE, 9);
  await Deno.writeFile(img, whole);
  // raw with an offset over the file: replies come from the file at offset + 1 MiB.
  const start = 1 << 20;
  const size = 8 << 20;
  await Deno.writeFile(`${dir}/expect.raw`, whole.subarray(start, start + size));
  const graph = new Graph({ registry: defaultRegistry() });
  const node = await graph.open({
    driver: "raw",
    "node-name": "disk",
    offset: start,
    size,
    file: { driver: "file", filename: img },
  }, "test");
  try {
    for (
      const addr of [{ type: "inet", host: "127.0.0.1", port: 0 }, {
        type: "unix",
        path: `${dir}/s`,
      }] as const
    ) {
      const { server, uri } = await serveDisk(graph, addr, true);
      try {
        const before = hostSendCounters.ranges;
        await mustPeer("qemu-img", ["compare", "-f", "raw", "-F", "raw", `${dir}/expect.raw`, uri]);
        await mustPeer("nbdcopy", [uri, `${dir}/out.raw`]);
        assertBytesEqual(
          await Deno.readFile(`${dir}/out.raw`),
          whole.subarray(start, start + size),
          `nbdcopy over ${addr.type}`,
        );
        assert(
          !cachestatAvailable() || hostSendCounters.ranges > before,
          `sendfile replies over ${addr.type}`,
        );
        // What a write puts in the page cache is what the next sendfile reply carries.
        const seed = addr.type === "inet" ? "0x5c" : "0x6d";
        await mustPeer("qemu-io", [
          "-f",
          "raw",
          ...c(`write -P ${seed} 4096 1M`, `read -P ${seed} 4096 1M`),
          uri,
        ]);
        whole.fill(Number(seed), start + 4096, start + 4096 + (1 << 20));
        await Deno.writeFile(`${dir}/expect.raw`, whole.subarray(start, start + size));
      } finally {
        await server.stop();
      }
    }
    await node.unref("test");
    await graph.closeAll();
    const file = await Deno.readFile(img);
    assertBytesEqual(
      file.subarray(start + 4096, start + 4096 + (1 << 20)),
      new Uint8Array(1 << 20).fill(0x6d),
      "in the file",
    );
    assertBytesEqual(
      file.subarray(0, start),
      whole.subarray(0, start),
      "before the window: untouched",
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a qcow2 export sends its contiguous data clusters with sendfile; holes read as zeros", async () => {
  await ensurePeers(["qemu-img", "nbdcopy"]);
  const dir = await Deno.makeTempDir({ prefix: "nbd-sendfile-qcow2-" });
  const raw = `${dir}/half.raw`;
  const qcow2 = `${dir}/half.qcow2`;
  // Data in every other MiB; qemu-img stores it in order, so each data MiB is one run.
  const content = new Uint8Array(SIZE);
  for (let at = 0; at < SIZE; at += 2 << 20) content.set(pattern(1 << 20, at >> 20), at);
  await Deno.writeFile(raw, content);
  await mustPeer("qemu-img", ["convert", "-f", "raw", "-O", "qcow2", raw, qcow2]);
  await Deno.readFile(qcow2); // into the page cache
  const graph = new Graph({ registry: defaultRegistry() });
  const node = await graph.open({
    driver: "qcow2",
    "node-name": "disk",
    file: { driver: "file", filename: qcow2 },
  }, "test");
  const { server, uri } = await serveDisk(graph, { type: "unix", path: `${dir}/s` }, false);
  try {
    const before = hostSendCounters.bytes;
    await mustPeer("nbdcopy", [uri, `${dir}/out.raw`]);
    assertBytesEqual(await Deno.readFile(`${dir}/out.raw`), content, "nbdcopy of the qcow2 export");
    assert(
      !cachestatAvailable() || hostSendCounters.bytes > before,
      "data clusters went out with sendfile",
    );
    await mustPeer("qemu-img", ["compare", "-f", "raw", "-F", "raw", raw, uri]);
  } finally {
    await server.stop();
    await node.unref("test");
    await graph.closeAll();
    await Deno.remove(dir, { recursive: true });
  }
});
