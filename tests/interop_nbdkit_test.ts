/**
 * Our `nbd` client against nbdkit: its memory plugin (reads, writes, zeroes, trims, flush,
 * structured replies and `base:allocation` block status), its error filter (errors surface as
 * BlockError EIO with the operation and the offset, and the connection keeps working), its
 * delay filter (slow replies are waited for, pipelined requests overlap, nothing hangs), and
 * reconnect-delay across an nbdkit restart. Unix sockets in temporary directories; every
 * nbdkit has a timeout and is killed in `finally`.
 */
import { BlockError, BlockStatusFlags, Graph, type Node } from "@blockgraph/core";
import { defaultRegistry, NbdInstance } from "@blockgraph/drivers";
import { assert, assertBytesEqual, assertEquals, pattern } from "@blockgraph/drivers/conformance";
import { ensurePeers } from "./peers.ts";
import { listening, type PeerServer, spawnPeer } from "./peer_run.ts";

const SIZE = 64 << 20;

function nbdkit(sock: string, args: string[]): Promise<PeerServer> {
  return spawnPeer("nbdkit", ["-f", "-U", sock, ...args], () => listening(sock));
}

async function withNbdkit(
  args: string[],
  fn: (node: Node, dir: string, sock: string) => Promise<void>,
  reconnectDelay = 0,
): Promise<void> {
  await ensurePeers(["nbdkit"]);
  const dir = await Deno.makeTempDir({ prefix: "nbdkit-interop-" });
  const sock = `${dir}/nbdkit.sock`;
  const peer = await nbdkit(sock, args);
  const graph = new Graph({ registry: defaultRegistry() });
  try {
    const node = await graph.open({
      driver: "nbd",
      "server.type": "unix",
      "server.path": sock,
      "reconnect-delay": reconnectDelay,
    }, "test");
    try {
      await fn(node, dir, sock);
    } finally {
      await node.unref("test");
    }
  } finally {
    await graph.closeAll();
    await peer.stop();
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("nbd client against nbdkit memory: data, zeroes, trim, flush, block status", async () => {
  await withNbdkit(["memory", `${SIZE}`], async (node) => {
    const inst = node.instance as NbdInstance;
    assert(inst.client.info.structured, "nbdkit negotiated structured replies");
    assert(inst.client.info.baseAllocationId !== null, "nbdkit offers base:allocation");
    assertEquals(node.getLength(), SIZE, "size");
    await node.write(1 << 20, pattern(3 << 20, 4));
    const got = new Uint8Array(3 << 20);
    await node.read(1 << 20, got);
    assertBytesEqual(got, pattern(3 << 20, 4), "read back (structured OFFSET_DATA chunks)");
    const hole = await node.blockStatus(32 << 20, 1 << 20);
    assertEquals(hole.status & BlockStatusFlags.DATA, 0, "an unwritten range is a hole");
    assert((hole.status & BlockStatusFlags.ZERO) !== 0, "and reads as zeros");
    const data = await node.blockStatus(1 << 20, 3 << 20);
    assert((data.status & BlockStatusFlags.DATA) !== 0, "a written range is data");
    await node.pwriteZeroes(2 << 20, 1 << 20, 0);
    await node.pdiscard(3 << 20, 1 << 20);
    await node.flush();
    const z = new Uint8Array(1 << 20);
    await node.read(2 << 20, z);
    assertBytesEqual(z, new Uint8Array(1 << 20), "zeroed range");
    const sparse = new Uint8Array(2 << 20);
    await node.read(40 << 20, sparse);
    assertBytesEqual(sparse, new Uint8Array(2 << 20), "never written: zeros");
  });
});

Deno.test("nbd client against nbdkit's error filter: BlockError EIO with the offset", async () => {
  const dir0 = await Deno.makeTempDir({ prefix: "nbdkit-trigger-" });
  const trigger = `${dir0}/trigger`;
  try {
    await withNbdkit(
      [
        "--filter=error",
        "memory",
        `${SIZE}`,
        "error=EIO",
        "error-rate=100%",
        `error-file=${trigger}`,
      ],
      async (node) => {
        await node.write(4 << 20, pattern(65536, 5));
        await Deno.writeFile(trigger, new Uint8Array(0));
        for (
          const [op, run] of [
            ["read", () => node.read(4 << 20, new Uint8Array(65536))],
            ["write", () => node.write(5 << 20, pattern(4096, 6))],
          ] as const
        ) {
          let err: unknown = null;
          try {
            await run();
          } catch (e) {
            err = e;
          }
          assert(err instanceof BlockError, `${op} fails with a BlockError: ${err}`);
          assertEquals(err.code, "EIO", `${op} error code`);
          assertEquals(err.offset, op === "read" ? 4 << 20 : 5 << 20, `${op} error offset`);
          assert(err.message.includes(`offset ${err.offset}`), err.message);
        }
        await Deno.remove(trigger);
        const got = new Uint8Array(65536);
        await node.read(4 << 20, got);
        assertBytesEqual(got, pattern(65536, 5), "the connection keeps working after errors");
      },
    );
  } finally {
    await Deno.remove(dir0, { recursive: true });
  }
});

Deno.test("nbd client against nbdkit's delay filter: slow replies overlap and never hang", async () => {
  await withNbdkit(["--filter=delay", "memory", `${SIZE}`, "delay-read=300ms"], async (node) => {
    await node.write(0, pattern(65536, 8));
    const t0 = performance.now();
    const bufs = Array.from({ length: 8 }, () => new Uint8Array(8192));
    await Promise.all(bufs.map((b, i) => node.read(i * 8192, b)));
    const ms = performance.now() - t0;
    assert(ms >= 290, `each read waited for the delay (${ms.toFixed(0)} ms)`);
    assert(ms < 2000, `8 pipelined reads overlap rather than queue (${ms.toFixed(0)} ms)`);
    const all = new Uint8Array(65536);
    bufs.forEach((b, i) => all.set(b, i * 8192));
    assertBytesEqual(all, pattern(65536, 8), "delayed data");
  });
});

/**
 * An nbd node with `reconnect-delay` over a fresh nbdkit: a first write, the server gone for
 * `idleMs`, a write started, the server back 300 ms later; `after` runs once that write is
 * done.
 */
async function serverComesBack(
  prefix: string,
  reconnectDelay: number,
  idleMs: number,
  after: (node: Node) => Promise<void>,
): Promise<void> {
  await ensurePeers(["nbdkit"]);
  const dir = await Deno.makeTempDir({ prefix });
  const sock = `${dir}/nbdkit.sock`;
  const args = ["memory", `${SIZE}`];
  let peer = await nbdkit(sock, args);
  const graph = new Graph({ registry: defaultRegistry() });
  try {
    const node = await graph.open(
      {
        driver: "nbd",
        "server.type": "unix",
        "server.path": sock,
        "reconnect-delay": reconnectDelay,
      },
      "test",
    );
    await node.write(0, pattern(4096, 1));
    await peer.stop();
    await Deno.remove(sock).catch(() => {});
    if (idleMs > 0) await new Promise((r) => setTimeout(r, idleMs));
    const pending = node.write(8192, pattern(4096, 2));
    await new Promise((r) => setTimeout(r, 300));
    peer = await nbdkit(sock, args);
    await pending;
    await after(node);
    await node.unref("test");
  } finally {
    await graph.closeAll();
    await peer.stop();
    await Deno.remove(dir, { recursive: true });
  }
}

// A request while the server is gone waits for the reconnect instead of failing.
Deno.test("nbd client with reconnect-delay rides out an nbdkit restart", () =>
  serverComesBack("nbdkit-reconnect-", 5, 0, async (node) => {
    const got = new Uint8Array(4096);
    await node.read(8192, got);
    assertBytesEqual(got, pattern(4096, 2), "written after the reconnect");
  }));

Deno.test("nbd client without reconnect-delay fails fast with EIO when nbdkit goes away", async () => {
  await ensurePeers(["nbdkit"]);
  const dir = await Deno.makeTempDir({ prefix: "nbdkit-gone-" });
  const sock = `${dir}/nbdkit.sock`;
  const peer = await nbdkit(sock, ["memory", `${SIZE}`]);
  const graph = new Graph({ registry: defaultRegistry() });
  try {
    const node = await graph.open(
      { driver: "nbd", "server.type": "unix", "server.path": sock },
      "test",
    );
    await peer.stop();
    const t0 = performance.now();
    let err: unknown = null;
    try {
      await node.read(0, new Uint8Array(4096));
    } catch (e) {
      err = e;
    }
    assert(err instanceof BlockError && err.code === "EIO", `EIO: ${err}`);
    assert(performance.now() - t0 < 2000, "no hang");
    await node.unref("test");
  } finally {
    await graph.closeAll();
    await peer.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

// Idle for longer than reconnect-delay: the request that finds the connection gone still
// waits up to reconnect-delay for the server.
Deno.test("reconnect-delay counts from the first request after the loss, as QEMU's", () =>
  serverComesBack("nbdkit-idle-loss-", 1, 1500, () => Promise.resolve()));

Deno.test("without reconnect-delay a request in flight when the connection drops fails, as QEMU's", async () => {
  await withNbdkit(["--filter=delay", "memory", `${SIZE}`, "delay-read=500ms"], async (node) => {
    const inst = node.instance as NbdInstance;
    const pending = node.read(0, new Uint8Array(4096)).then(() => null, (e) => e);
    await new Promise((r) => setTimeout(r, 100));
    inst.client.breakConnection();
    const err = await pending;
    assert(err instanceof BlockError && err.code === "EIO", `EIO: ${err}`);
    // The next request connects again.
    await node.read(0, new Uint8Array(4096));
  });
});
