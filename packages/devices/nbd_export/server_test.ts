/**
 * The NBD server under abuse and lifecycle changes: malformed requests, read-only exports,
 * clients that vanish, 64 clients at once, export deletion and medium removal, the
 * connection limit, replies to clients that stop reading, and sendfile replies. The
 * handshake's tests are in `handshake_test.ts`, the client's reconnection in
 * `client_reconnect_test.ts`; the fixture is `testing_server.ts`.
 */
import { type Backend, type BlockDriver, BlockError, Graph, Perm } from "@blockgraph/core";
import { defaultRegistry } from "@blockgraph/drivers";
import { assert, assertBytesEqual, assertEquals, pattern } from "@blockgraph/drivers/conformance";
import { Cmd, CmdFlags, encodeRequest, newRequestHeader, ReplyType } from "@blockgraph/drivers/nbd";
import { cachestatAvailable, hostSendCounters } from "@blockgraph/drivers/nbd";
import { NbdExport } from "./export.ts";
import {
  chunk,
  closedByServer,
  expectError,
  raw,
  send,
  SIZE,
  withServer,
} from "./testing_server.ts";

Deno.test("NbdServer answers bad requests with the protocol's errors and keeps serving", async () => {
  await withServer(async ({ sock }) => {
    const r = await raw(sock);
    // The messages are qemu-nbd 7.2's.
    send(r, 42, 0, 0, 0);
    assertEquals(await expectError(r, 22, "unknown command"), "invalid request type (42) received");
    send(r, Cmd.READ, 0, SIZE - 10, 11);
    assertEquals(
      await expectError(r, 22, "read past the end"),
      `operation past EOF; From: ${SIZE - 10}, Len: 11, Size: ${SIZE}`,
    );
    send(r, Cmd.WRITE, 0, SIZE - 1, 2, new Uint8Array(2));
    await expectError(r, 28, "write past the end");
    send(r, Cmd.WRITE_ZEROES, 0, SIZE, 1);
    await expectError(r, 28, "write zeroes past the end");
    send(r, Cmd.READ, 0, 0, 33 << 20);
    assertEquals(
      await expectError(r, 22, "read over the 32 MiB limit"),
      `len (${33 << 20} ) is larger than max len (33554432)`,
    );
    send(r, Cmd.READ, CmdFlags.REQ_ONE, 0, 512);
    assertEquals(
      await expectError(r, 22, "a flag the command does not take"),
      "unsupported flags for command read (got 0x8)",
    );
    send(r, Cmd.BLOCK_STATUS, 0, 0, 0);
    assertEquals(await expectError(r, 22, "block status of nothing"), "need non-zero length");
    send(r, Cmd.WRITE, CmdFlags.FUA, 4096, 3, new Uint8Array([1, 2, 3]));
    assertEquals((await chunk(r)).type, ReplyType.NONE, "a good write after the errors");
    send(r, Cmd.READ, CmdFlags.DF, 4095, 5);
    const c = await chunk(r);
    assertEquals(c.type, ReplyType.OFFSET_DATA, "read with DF: one data chunk");
    assertBytesEqual(c.data.subarray(8), new Uint8Array([0, 1, 2, 3, 0]), "data read back");
    r.conn.close();
  });
});

/** A disk whose reads and writes from {@link FLAKY_FROM} on fail with EIO. */
const FLAKY_FROM = 1 << 20;
const flaky: BlockDriver = {
  name: "flaky",
  kind: "protocol",
  options: { size: { type: "size", description: "size", default: SIZE } },
  open(_ctx, o) {
    const data = new Uint8Array(o["size"] as number);
    const check = (offset: number, bytes: number) => {
      if (offset + bytes > FLAKY_FROM) throw new BlockError("EIO", "Injected error", { offset });
    };
    return Promise.resolve({
      limits: { requestAlignment: 1, maxTransfer: 0 },
      getLength: () => data.length,
      preadv(offset, bytes, qiov, qo) {
        check(offset, bytes);
        qiov.copyFrom(qo, data, offset, bytes);
        return Promise.resolve();
      },
      pwritev(offset, bytes, qiov, qo) {
        // Fails asynchronously, as a real device does.
        return Promise.resolve().then(() => {
          check(offset, bytes);
          qiov.copyTo(qo, data, offset, bytes);
        });
      },
      close: () => Promise.resolve(),
    });
  },
};

Deno.test("NbdServer answers failed reads and writes with EIO, pipelined, and keeps serving", async () => {
  await withServer(async ({ sock }) => {
    const r = await raw(sock);
    const good = pattern(4096, 0x5a);
    // Sent together, so they are in flight at once; replies come in any order.
    const order = [
      send(r, Cmd.WRITE, 0, 4096, 4096, good),
      send(r, Cmd.READ, 0, FLAKY_FROM, 4096),
      send(r, Cmd.WRITE, 0, FLAKY_FROM - 512, 4096, good),
      send(r, Cmd.READ, CmdFlags.DF, FLAKY_FROM + 65536, 128 << 10),
      send(r, Cmd.WRITE, CmdFlags.FUA, 8192, 4096, good),
    ];
    const replies = new Map<number, { type: number; data: Uint8Array }>();
    for (let i = 0; i < order.length; i++) {
      const c = await chunk(r);
      replies.set(c.cookie, c);
    }
    const [w1, rBad, wBad, rBigBad, w2] = order.map((k) => replies.get(k)!);
    assertEquals(w1!.type, ReplyType.NONE, "the good write");
    assertEquals(w2!.type, ReplyType.NONE, "the good FUA write");
    for (const [c, what] of [[rBad, "read"], [wBad, "write"], [rBigBad, "large read"]] as const) {
      assertEquals(c!.type, ReplyType.ERROR, `failed ${what}: chunk type`);
      assertEquals(new DataView(c!.data.buffer).getUint32(0), 5, `failed ${what}: EIO`);
    }
    send(r, Cmd.READ, 0, 4096, 8192);
    const back = await chunk(r);
    assertEquals(back.type, ReplyType.OFFSET_DATA, "read after the errors");
    assertBytesEqual(back.data.subarray(8, 8 + 4096), good, "the good write reads back");
    assertBytesEqual(back.data.subarray(8 + 4096), good, "the good FUA write reads back");
    r.conn.close();
  }, { driver: flaky });
});

Deno.test("NbdServer sparse reads send holes and block status reports both contexts", async () => {
  await withServer(async ({ sock, node }) => {
    await node.write(65536, pattern(65536, 1));
    const r = await raw(sock);
    const id = send(r, Cmd.READ, 0, 0, 3 * 65536);
    const types: number[] = [];
    for (;;) {
      const c = await chunk(r);
      assertEquals(c.cookie, id, "cookie");
      types.push(c.type);
      if (c.flags & 1) break;
    }
    assertEquals(types.join(), "2,1,2", "hole, data, hole");
    send(r, Cmd.BLOCK_STATUS, 0, 0, 3 * 65536);
    const st = await chunk(r);
    const v = new DataView(st.data.buffer);
    assertEquals(st.type, ReplyType.BLOCK_STATUS, "block status chunk");
    assertEquals(
      [v.getUint32(4), v.getUint32(8), v.getUint32(12), v.getUint32(16)].join(),
      "65536,3,65536,0",
      "hole+zero then data",
    );
    r.conn.close();
  });
});

Deno.test("NbdServer read-only exports refuse writes, trims and zeroes with EPERM", async () => {
  await withServer(async ({ sock }) => {
    const r = await raw(sock);
    assert(r.info.flags & 2, "READ_ONLY advertised");
    send(r, Cmd.WRITE, 0, 0, 4, new Uint8Array(4));
    await expectError(r, 1, "write");
    send(r, Cmd.TRIM, 0, 0, 4096);
    await expectError(r, 1, "trim");
    send(r, Cmd.WRITE_ZEROES, 0, 0, 4096);
    await expectError(r, 1, "write zeroes");
    send(r, Cmd.READ, 0, 0, 4096);
    const c = await chunk(r);
    assertEquals(c.type, ReplyType.OFFSET_DATA, "reads still work (small reads are not sparse)");
    assertBytesEqual(c.data.subarray(8), new Uint8Array(4096), "zeros read");
    r.conn.close();
  }, { writable: false });
});

Deno.test("NbdServer ends a connection on bad magic or an oversized write, serving others", async () => {
  await withServer(async ({ sock }) => {
    const good = await raw(sock);
    const bad = await raw(sock);
    // A request with its magic wrong: answered to its cookie, as qemu-nbd does.
    const garbage = new Uint8Array(28).fill(0x41);
    new DataView(garbage.buffer).setUint32(8, 7);
    bad.writer.copy(garbage);
    assertEquals(
      await expectError(bad, 22, "bad magic is answered EINVAL"),
      "invalid magic (got 0x41414141)",
    );
    assert(await closedByServer(bad), "bad magic closes the connection");
    const big = await raw(sock);
    send(big, Cmd.WRITE, 0, 0, (32 << 20) + 1);
    await expectError(big, 22, "a write over 32 MiB is refused");
    assert(await closedByServer(big), "a write over 32 MiB closes the connection");
    send(good, Cmd.FLUSH, 0, 0, 0);
    assertEquals((await chunk(good)).type, ReplyType.NONE, "the other client is served");
    for (const r of [good, bad, big]) r.conn.close();
  });
});

Deno.test("NbdServer loses no acknowledged write when a client vanishes mid-write", async () => {
  await withServer(async ({ sock, node }) => {
    const a = await raw(sock);
    send(a, Cmd.WRITE, 0, 0, 4096, pattern(4096, 3));
    assertEquals((await chunk(a)).type, ReplyType.NONE, "first write acknowledged");
    send(a, Cmd.WRITE, 0, 8192, 65536);
    a.writer.copy(pattern(1000, 4));
    await a.writer.idle();
    a.conn.close();
    const b = await raw(sock);
    send(b, Cmd.READ, 0, 0, 4096);
    const c = await chunk(b);
    assertBytesEqual(c.data.subarray(8), pattern(4096, 3), "acknowledged write kept");
    const half = new Uint8Array(1000);
    await node.read(8192, half);
    assertBytesEqual(half, new Uint8Array(1000), "the half-sent write was not applied");
    b.conn.close();
  });
});

Deno.test("NbdServer serves 64 concurrent clients, each verifying its own region", async () => {
  await withServer(async ({ sock }) => {
    const graph = new Graph({ registry: defaultRegistry() });
    const nodes = await Promise.all(
      Array.from(
        { length: 64 },
        () =>
          graph.open({ driver: "nbd", server: { type: "unix", path: sock }, export: "disk" }, "t"),
      ),
    );
    const region = SIZE / 64;
    await Promise.all(nodes.map(async (n, i) => {
      for (let k = 0; k < 4; k++) await n.write(i * region + k * 4096, pattern(4096, i + k));
      const got = new Uint8Array(4 * 4096);
      await n.read(i * region, got);
      for (let k = 0; k < 4; k++) {
        assertBytesEqual(
          got.subarray(k * 4096, (k + 1) * 4096),
          pattern(4096, i + k),
          `client ${i}`,
        );
      }
    }));
    for (const n of nodes) await n.unref("t");
    await graph.closeAll();
  });
});

Deno.test("NbdServer block-export-del ends connections and emits BLOCK_EXPORT_DELETED", async () => {
  await withServer(async ({ graph, server, sock }) => {
    const events: unknown[] = [];
    graph.events.on("BLOCK_EXPORT_DELETED", (e) => events.push(e.data));
    const r = await raw(sock);
    let refused = "";
    await server.deleteExport("e0").catch((e: BlockError) => (refused = e.code));
    assertEquals(refused, "EBUSY", "safe delete of an export in use");
    await server.deleteExport("e0", true);
    assert(await closedByServer(r), "the client was disconnected");
    assertEquals(JSON.stringify(events), JSON.stringify([{ id: "e0" }]), "event");
    assertEquals(server.queryExports().length, 0, "export gone");
    let code = "";
    await raw(sock).catch((e: BlockError) => (code = e.code));
    assertEquals(code, "ENOENT", "the export name is unknown now");
    r.conn.close();
  });
});

Deno.test("NbdExport goes away when the medium under it is removed (iotest 140)", async () => {
  await withServer(async ({ graph, server, sock, node }) => {
    const blk: Backend = graph.createBackend({ name: "drv", perm: Perm.CONSISTENT_READ });
    await blk.insertRoot(node);
    const exp = new NbdExport({ id: "e1", name: "drv", backend: blk });
    server.serveExport(exp);
    const events: string[] = [];
    graph.events.on("BLOCK_EXPORT_DELETED", (e) => events.push(String(e.data.id)));
    const r = await raw(sock, "drv");
    await blk.eject(true);
    assert(await closedByServer(r), "client disconnected");
    // The deletion the eject started (its event comes from a later task, as QEMU's).
    await exp.delete();
    assertEquals(events.join(), "e1", "BLOCK_EXPORT_DELETED");
    assertEquals(server.exportById("e1"), undefined, "export removed from the server");
    r.conn.close();
    await blk.unref();
  });
});

Deno.test("NbdServer maxConnections holds further clients until one leaves", async () => {
  await withServer(async ({ sock, server }) => {
    const first = await raw(sock);
    const second = raw(sock);
    const early = await Promise.race([
      second.then(() => "served"),
      new Promise((r) => setTimeout(() => r("waiting"), 200)),
    ]);
    assertEquals(early, "waiting", "the second client waits");
    first.conn.close();
    const s = await second;
    assertEquals(server.connectionCount, 1, "one connection");
    s.conn.close();
  }, { maxConnections: 1 });
});

Deno.test("NbdServer replies stay whole when they fill the send queue of a client not reading", async () => {
  await withServer(async ({ sock, node }) => {
    // Each read reply (20 + 8 + 65508 bytes) is a quarter of the writer's staging buffer, so
    // write replies keep landing exactly where the buffer is full.
    const len = 65536 - 28;
    await node.write(0, pattern(SIZE, 5));
    const r = await raw(sock);
    const expected = new Map<number, number>();
    for (let i = 0; i < 100; i++) {
      if (i % 5 === 4) {
        expected.set(send(r, Cmd.WRITE, 0, SIZE - 4096, 4096, pattern(4096, 5)), -1);
      } else {
        expected.set(send(r, Cmd.READ, 0, i * len, len), i * len);
      }
    }
    const want = pattern(SIZE, 5);
    // Let the replies pile up behind the full socket before reading any.
    await new Promise((ok) => setTimeout(ok, 100));
    // A stream out of step would leave the reads below waiting for bytes that never come.
    const timer = setTimeout(() => r.conn.close(), 10_000);
    for (let n = 0; n < 100; n++) {
      const c = await chunk(r);
      const offset = expected.get(c.cookie);
      assert(offset !== undefined, `reply ${n}: unknown cookie ${c.cookie}`);
      expected.delete(c.cookie);
      if (offset < 0) {
        assertEquals(c.type, ReplyType.NONE, `reply ${n}: write acknowledged`);
        continue;
      }
      assertEquals(c.type, ReplyType.OFFSET_DATA, `reply ${n}: read data`);
      assertBytesEqual(c.data.subarray(8), want.subarray(offset, offset + len), `reply ${n}`);
    }
    clearTimeout(timer);
    r.conn.close();
  });
});

Deno.test("NbdServer sparse reads in a data run skip block status, and trims end the run", async () => {
  await withServer(async ({ sock, node }) => {
    await node.write(0, pattern(4 * 65536, 2));
    const r = await raw(sock);
    const types = async (offset: number, length: number) => {
      const id = send(r, Cmd.READ, 0, offset, length);
      const out: number[] = [];
      for (;;) {
        const c = await chunk(r);
        assertEquals(c.cookie, id, "cookie");
        out.push(c.type);
        if (c.flags & 1) return out.join();
      }
    };
    assertEquals(await types(0, 2 * 65536), "1", "all data: one chunk");
    // The node changes under the export: the run still says data, and data is what is sent.
    await node.pdiscard(65536, 65536);
    assertEquals(await types(65536, 65536), "1", "inside the run: data, read as it is");
    send(r, Cmd.TRIM, 0, 2 * 65536, 65536);
    assertEquals((await chunk(r)).type, ReplyType.NONE, "trim acknowledged");
    assertEquals(await types(0, 4 * 65536), "1,2,1", "after the export's own trim: holes again");
    r.conn.close();
  });
});

Deno.test("NbdServer takes writes whose payload trickles in and writes pipelined in one segment", async () => {
  await withServer(async ({ sock, node }) => {
    const r = await raw(sock);
    // One write sent a few bytes per socket write: header and payload split many ways.
    const h = newRequestHeader();
    Object.assign(h, { type: Cmd.WRITE, flags: 0, offset: 8192, length: 20000 });
    Object.assign(h, { cookieHi: 7, cookieLo: 999 });
    const msg = new Uint8Array(28 + 20000);
    encodeRequest(new DataView(msg.buffer), 0, h);
    msg.set(pattern(20000, 8), 28);
    for (let at = 0, step = 1; at < msg.length; at += step, step = step * 3 % 4099 + 1) {
      await r.conn.write(msg.subarray(at, Math.min(msg.length, at + step)));
      if (at < 200) await new Promise((ok) => setTimeout(ok, 1));
    }
    const c = await chunk(r);
    assertEquals([c.cookie, c.type].join(), "999,0", "the trickled write acknowledged");
    // Then 64 writes of 4 KiB (and their headers) in one socket write.
    const n = 64;
    const batch = new Uint8Array(n * (28 + 4096));
    for (let i = 0; i < n; i++) {
      Object.assign(h, { offset: 65536 + i * 4096, length: 4096, cookieLo: 1000 + i });
      encodeRequest(new DataView(batch.buffer), i * (28 + 4096), h);
      batch.set(pattern(4096, 20 + i), i * (28 + 4096) + 28);
    }
    await r.writer.idle();
    for (let at = 0; at < batch.length;) at += await r.conn.write(batch.subarray(at));
    const seen = new Set<number>();
    for (let i = 0; i < n; i++) {
      const c = await chunk(r);
      assertEquals(c.type, ReplyType.NONE, "write acknowledged");
      seen.add(c.cookie);
    }
    assertEquals(seen.size, n, "every cookie answered once");
    const got = new Uint8Array(20000);
    await node.read(8192, got);
    assertBytesEqual(got, pattern(20000, 8), "trickled payload");
    const all = new Uint8Array(n * 4096);
    await node.read(65536, all);
    for (let i = 0; i < n; i++) {
      assertBytesEqual(all.subarray(i * 4096, (i + 1) * 4096), pattern(4096, 20 + i), `write ${i}`);
    }
    r.conn.close();
  });
});

Deno.test("NbdServer sendfile replies keep their turn among buffered ones; a client leaving mid-reply harms no one", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nbd-sendfile-" });
  const file = `${dir}/disk.raw`;
  const want = pattern(SIZE, 8);
  await Deno.writeFile(file, want); // written, so in the page cache
  try {
    await withServer(async ({ sock }) => {
      const before = hostSendCounters.ranges;
      // A client that asks for 8 MiB and leaves without reading a byte.
      const gone = await raw(sock);
      for (let i = 0; i < 8; i++) send(gone, Cmd.READ, 0, i << 20, 1 << 20);
      await gone.writer.idle();
      gone.conn.close();
      // One that pipelines large (sendfile) and small (buffered) reads and writes, and reads
      // nothing until the replies have filled its socket.
      const r = await raw(sock);
      const expected = new Map<number, [number, number]>();
      for (let i = 0; i < 60; i++) {
        const big = i % 3 === 0;
        const len = big ? (1 << 20) - 4096 : 4096;
        const offset = (i * 131072 + 512) % (SIZE - len);
        if (i % 7 === 6) {
          expected.set(send(r, Cmd.WRITE, 0, SIZE - 4096, 4096, want.subarray(SIZE - 4096)), [
            -1,
            0,
          ]);
        } else {
          expected.set(send(r, Cmd.READ, 0, offset, len), [offset, len]);
        }
      }
      await new Promise((ok) => setTimeout(ok, 100));
      const timer = setTimeout(() => r.conn.close(), 10_000);
      for (let n = 0; n < 60; n++) {
        const c = await chunk(r);
        const e = expected.get(c.cookie);
        assert(e !== undefined, `reply ${n}: unknown cookie ${c.cookie}`);
        expected.delete(c.cookie);
        const [offset, len] = e;
        if (offset < 0) {
          assertEquals(c.type, ReplyType.NONE, `reply ${n}: write acknowledged`);
          continue;
        }
        assertEquals(c.type, ReplyType.OFFSET_DATA, `reply ${n}: data`);
        assertEquals(
          new DataView(c.data.buffer, c.data.byteOffset).getUint32(4),
          offset,
          `reply ${n}: offset`,
        );
        assertBytesEqual(c.data.subarray(8), want.subarray(offset, offset + len), `reply ${n}`);
      }
      clearTimeout(timer);
      assert(
        !cachestatAvailable() || hostSendCounters.ranges > before,
        "large replies went out with sendfile",
      );
      r.conn.close();
    }, { file });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/**
 * A client that pipelines 32 MiB of reads and stops reading the replies after two, on `file`
 * (sendfile replies) or the memory driver (Deno's writes): deleting the export must still end.
 */
async function deleteUnderStuckClient(file?: string): Promise<void> {
  await withServer(async ({ sock, server, node }) => {
    if (!file) await node.write(0, pattern(SIZE, 9)); // data, not holes
    const before = hostSendCounters.ranges;
    const r = await raw(sock);
    for (let i = 0; i < 32; i++) send(r, Cmd.READ, 0, (i % 8) << 20, 1 << 20);
    await r.writer.idle();
    // Two replies are read (so they went out whole); the rest fill the socket and wait.
    let replies = 0;
    for (; replies < 2; replies++) {
      assertEquals((await chunk(r)).type, ReplyType.OFFSET_DATA, `reply ${replies}: data`);
    }
    await new Promise((ok) => setTimeout(ok, 200));
    let timer: ReturnType<typeof setTimeout> | undefined;
    const stuck = new Promise<"stuck">((ok) => (timer = setTimeout(() => ok("stuck"), 15_000)));
    const outcome = await Promise.race([
      server.deleteExport("e0", true).then(() => "deleted" as const),
      stuck,
    ]);
    clearTimeout(timer);
    assertEquals(outcome, "deleted", "block-export-del ended under a client not reading");
    assertEquals(server.queryExports().length, 0, "export gone");
    // What reached the client is whole replies and then the end of the stream.
    for (;;) {
      const head = await r.reader.need(20).catch(() => false);
      if (!head) break;
      const c = await chunk(r).catch(() => null);
      if (c === null) break;
      assertEquals(c.type, ReplyType.OFFSET_DATA, `reply ${replies}: data`);
      replies++;
    }
    assert(replies < 32, `the server cut the connection (${replies} replies arrived)`);
    assert(
      !file || !cachestatAvailable() || hostSendCounters.ranges > before,
      "replies went out with sendfile",
    );
    r.conn.close();
  }, file ? { file } : {});
}

Deno.test("NbdServer block-export-del cuts a client that stopped reading its replies (buffered)", async () => {
  await deleteUnderStuckClient();
});

Deno.test("NbdServer block-export-del cuts a client that stopped reading its replies (sendfile)", async () => {
  const dir = await Deno.makeTempDir({ prefix: "nbd-stuck-" });
  const file = `${dir}/disk.raw`;
  await Deno.writeFile(file, pattern(SIZE, 9)); // written, so in the page cache
  try {
    await deleteUnderStuckClient(file);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
