import { assert, assertBytesEqual, assertEquals, pattern } from "../conformance/mod.ts";
import { BlockError } from "@blockgraph/core";
import { withDir } from "./engine_testing.ts";
import {
  cachestatAvailable,
  hostSendCounters,
  rangeCached,
  sendHeadAndRange,
} from "./host_send.ts";
import { libcFiles } from "./posix_file.ts";
import { ListenerSockets } from "./socket_fd.ts";

const MiB = 1 << 20;

/** A loopback TCP connection: the server side's descriptor, and the client. */
async function withPair(
  fn: (fd: number, client: Deno.Conn, server: Deno.Conn) => Promise<void>,
): Promise<void> {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const client = await Deno.connect({
    hostname: "127.0.0.1",
    port: (listener.addr as Deno.NetAddr).port,
  });
  const server = await listener.accept();
  listener.close();
  const s = new ListenerSockets().find(server);
  assert(s !== null, "the server socket is found");
  try {
    await fn(s.fd, client, server);
  } finally {
    try {
      client.close();
    } catch {
      // Closed by the test.
    }
    server.close();
  }
}

async function readN(conn: Deno.Conn, n: number): Promise<Uint8Array> {
  const out = new Uint8Array(n);
  let at = 0;
  while (at < n) {
    const r = await conn.read(out.subarray(at));
    if (r === null) break;
    at += r;
  }
  return out.subarray(0, at);
}

Deno.test("rangeCached: pages never read are not cached, read ones are", async () => {
  await withDir(async (dir) => {
    const path = `${dir}/f`;
    await Deno.writeFile(path, pattern(MiB, 1));
    const f = await Deno.open(path, { write: true });
    await f.truncate(64 * MiB); // a sparse tail no one has read
    f.close();
    const files = libcFiles();
    const fd = files.open(path, { write: false });
    try {
      if (!cachestatAvailable()) {
        // Before Linux 6.5: never cached, so the NBD server never uses sendfile.
        assert(!rangeCached(fd, 0, MiB), "without cachestat the answer is no");
        console.log("no cachestat(2) on this kernel: sendfile replies are off");
        return;
      }
      assert(rangeCached(fd, 0, MiB), "the written first MiB is cached");
      assert(rangeCached(fd, 4096 + 17, 5000), "an unaligned range inside it too");
      assert(!rangeCached(fd, 32 * MiB, MiB), "a hole never read is not");
      assert(!rangeCached(fd, MiB - 4096, 8192), "nor a range that runs into it");
      const buf = new Uint8Array(MiB);
      const g = await Deno.open(path);
      await g.seek(32 * MiB, Deno.SeekMode.Start);
      for (let at = 0; at < MiB;) at += (await g.read(buf.subarray(at)))!;
      g.close();
      assert(rangeCached(fd, 32 * MiB, MiB), "once read, it is");
    } finally {
      files.close(fd);
    }
  });
});

Deno.test("sendHeadAndRange sends the header then the range, waiting for a slow reader", async () => {
  await withDir(async (dir) => {
    const size = 24 * MiB; // more than the socket buffers take: the send must wait
    const data = pattern(size + 4096, 2);
    await Deno.writeFile(`${dir}/f`, data);
    const files = libcFiles();
    const fd = files.open(`${dir}/f`, { write: false });
    try {
      await withPair(async (sock, client) => {
        const head = new TextEncoder().encode("HEAD:");
        const before = hostSendCounters.ranges;
        let settled = false;
        const sent = sendHeadAndRange(sock, head, fd, 4096, size).finally(() => settled = true);
        await new Promise((r) => setTimeout(r, 50)); // the reader starts late
        assert(!settled, "the send waits for the reader");
        const got = await readN(client, head.length + size);
        await sent;
        assertEquals(got.length, head.length + size, "bytes received");
        assertBytesEqual(got.subarray(0, head.length), head, "header first");
        assertBytesEqual(
          got.subarray(head.length),
          data.subarray(4096, 4096 + size),
          "then the range",
        );
        assertEquals(hostSendCounters.ranges, before + 1, "counted");
      });
    } finally {
      files.close(fd);
    }
  });
});

Deno.test("sendHeadAndRange fails cleanly when the peer leaves or the file is short", async () => {
  await withDir(async (dir) => {
    await Deno.writeFile(`${dir}/f`, pattern(32 * MiB, 3));
    const files = libcFiles();
    const fd = files.open(`${dir}/f`, { write: false });
    try {
      await withPair(async (sock, client) => {
        await readN(client, 0);
        client.close();
        let err: unknown = null;
        try {
          await sendHeadAndRange(sock, new Uint8Array(16), fd, 0, 32 * MiB);
        } catch (e) {
          err = e;
        }
        assert(err instanceof BlockError, `a BlockError: ${String(err)}`);
        assert(["EPIPE", "ECONNRESET"].includes(err.code), `peer gone: ${err.code} ${err.message}`);
      });
      await withPair(async (sock, client) => {
        const got = readN(client, 16 + MiB);
        let err: unknown = null;
        try {
          await sendHeadAndRange(sock, new Uint8Array(16), fd, 32 * MiB - 4096, MiB);
        } catch (e) {
          err = e;
        }
        assert(err instanceof BlockError && err.code === "EIO", `short file: ${String(err)}`);
        assert(err.message.includes("the file ended at 33554432"), err.message);
        client.close();
        await got.catch(() => {});
      });
    } finally {
      files.close(fd);
    }
  });
});
