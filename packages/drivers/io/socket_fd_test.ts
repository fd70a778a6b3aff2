import { assert, assertBytesEqual, assertEquals } from "../conformance/mod.ts";
import { withDir } from "./engine_testing.ts";
import { type ConnSocket, ListenerSockets } from "./socket_fd.ts";
import { MSG, socketLibc } from "./socket_libc.ts";

/** Sends `text` on descriptor `fd` and checks that `peer` is who receives it. */
async function assertSocketOf(fd: number, peer: Deno.Conn, text: string): Promise<void> {
  const bytes = new TextEncoder().encode(text);
  const n = Number(socketLibc().send(fd, bytes, bytes.length, MSG.NOSIGNAL));
  assertEquals(n, bytes.length, `sent on fd ${fd}`);
  const got = new Uint8Array(bytes.length);
  let at = 0;
  while (at < got.length) {
    const r = await peer.read(got.subarray(at));
    assert(r !== null, "peer reads");
    at += r;
  }
  assertBytesEqual(got, bytes, `fd ${fd} is the socket of '${text}'`);
}

Deno.test("ListenerSockets finds each accepted TCP connection's own socket", async () => {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  const sockets = new ListenerSockets();
  const clients: Deno.Conn[] = [];
  const accepted: Deno.Conn[] = [];
  try {
    // Three clients connect before any is accepted: addresses still tell them apart.
    for (let i = 0; i < 3; i++) clients.push(await Deno.connect({ hostname: "127.0.0.1", port }));
    for (let i = 0; i < 3; i++) accepted.push(await listener.accept());
    const found = accepted.map((c) => sockets.find(c));
    assert(found.every((s) => s !== null), "every connection found");
    assertEquals(new Set(found.map((s) => s!.fd)).size, 3, "three different descriptors");
    for (let i = 0; i < 3; i++) {
      const local = (clients[i]!.localAddr as Deno.NetAddr).port;
      const peer = accepted.findIndex((a) => (a.remoteAddr as Deno.NetAddr).port === local);
      await assertSocketOf(found[peer]!.fd, clients[i]!, `client ${i}`);
    }
  } finally {
    for (const c of [...clients, ...accepted]) c.close();
    listener.close();
  }
});

Deno.test("ListenerSockets finds unix connections one accept at a time, and refuses to guess", async () => {
  await withDir(async (dir) => {
    const path = `${dir}/s.sock`;
    const listener = Deno.listen({ path, transport: "unix" });
    const sockets = new ListenerSockets();
    const conns: Deno.Conn[] = [];
    try {
      const c1 = await Deno.connect({ path, transport: "unix" });
      const a1 = await listener.accept();
      const s1 = sockets.find(a1);
      conns.push(c1, a1);
      assert(s1 !== null, "the first connection is found");
      const c2 = await Deno.connect({ path, transport: "unix" });
      const a2 = await listener.accept();
      conns.push(c2, a2);
      const s2 = sockets.find(a2);
      assert(s2 !== null && s2.fd !== s1.fd, "the second is found, not the claimed first");
      await assertSocketOf(s1.fd, c1, "first");
      await assertSocketOf(s2.fd, c2, "second");
      // Two accepted before asking: both unclaimed on the same path, so no answer.
      const c3 = await Deno.connect({ path, transport: "unix" });
      const c4 = await Deno.connect({ path, transport: "unix" });
      const a3 = await listener.accept();
      const a4 = await listener.accept();
      conns.push(c3, c4, a3, a4);
      assertEquals(sockets.find(a3), null, "ambiguous: not guessed");
      // A released claim's socket counts again once its connection is gone.
      a1.close();
      c1.close();
      sockets.release(s1 as ConnSocket);
      assertEquals(sockets.find(a4), null, "still two unclaimed sockets (a3's and a4's)");
    } finally {
      for (const c of conns) {
        try {
          c.close();
        } catch {
          // Closed above.
        }
      }
      listener.close();
    }
  });
});
