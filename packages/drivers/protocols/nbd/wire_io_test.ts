import { assert, assertBytesEqual, assertEquals, pattern } from "../../conformance/mod.ts";
import { UnexpectedEof, WireReader, WireWriter } from "./wire_io.ts";

/** A connection that hands out `data` in reads of the given sizes (the rest at once). */
function feed(data: Uint8Array, sizes: number[] = []) {
  let at = 0;
  let i = 0;
  let reads = 0;
  return {
    get reads() {
      return reads;
    },
    read(p: Uint8Array): Promise<number | null> {
      if (at >= data.length) return Promise.resolve(null);
      const n = Math.min(p.length, sizes[i++] ?? data.length, data.length - at);
      p.set(data.subarray(at, at + n));
      at += n;
      reads++;
      return Promise.resolve(n);
    },
  };
}

/** A connection that records what is written, taking at most `chunk` bytes per write. */
function sink(chunk = Infinity) {
  const writes: Uint8Array[] = [];
  return {
    writes,
    write(p: Uint8Array): Promise<number> {
      const n = Math.min(p.length, chunk);
      writes.push(p.slice(0, n));
      return Promise.resolve(n);
    },
    all(): Uint8Array {
      const out = new Uint8Array(writes.reduce((n, w) => n + w.length, 0));
      let at = 0;
      for (const w of writes) {
        out.set(w, at);
        at += w.length;
      }
      return out;
    },
  };
}

Deno.test("WireReader.readInto assembles a payload that arrives split over many reads", async () => {
  const data = pattern(28 + 65536, 1);
  // The header in two pieces, then the payload a few bytes at a time and in odd sizes.
  const conn = feed(data, [10, 30, 7, 1, 4096, 3, 999, 20000]);
  const r = new WireReader(conn, 64);
  assert(await r.need(28), "header");
  assertBytesEqual(r.buf.subarray(r.pos, r.pos + 28), data.subarray(0, 28), "header bytes");
  r.consume(28);
  const payload = new Uint8Array(65536);
  await r.readInto(payload);
  assertBytesEqual(payload, data.subarray(28), "payload");
  assertEquals(r.available, 0, "nothing left over");
  assertEquals(await r.need(1), false, "clean end of stream");
});

Deno.test("WireReader serves many pipelined messages out of one read", async () => {
  const msgs = Array.from({ length: 50 }, (_, i) => pattern(28 + 4096, i));
  const all = new Uint8Array(msgs.length * (28 + 4096));
  msgs.forEach((m, i) => all.set(m, i * m.length));
  const conn = feed(all);
  const r = new WireReader(conn, all.length);
  for (const m of msgs) {
    assert(await r.need(28), "header");
    assertBytesEqual(r.buf.subarray(r.pos, r.pos + 28), m.subarray(0, 28), "header");
    r.consume(28);
    const p = new Uint8Array(4096);
    await r.readInto(p);
    assertBytesEqual(p, m.subarray(28), "payload");
  }
  assertEquals(conn.reads, 1, "one socket read for all of them");
});

Deno.test("WireReader.readInto throws UnexpectedEof when the stream ends inside a payload", async () => {
  const r = new WireReader(feed(pattern(100, 2), [40]), 64);
  let thrown: unknown = null;
  await r.readInto(new Uint8Array(200)).catch((e) => (thrown = e));
  assert(thrown instanceof UnexpectedEof, "UnexpectedEof");
});

Deno.test("WireWriter keeps order and its staging buffer when headers precede large messages", async () => {
  const conn = sink();
  const w = new WireWriter(conn, () => {}, 1024);
  const stage = w.buf;
  const big = [pattern(65536, 3), pattern(70000, 4)];
  const expect: Uint8Array[] = [];
  for (let i = 0; i < 2; i++) {
    const at = w.claim(16);
    w.buf.set(pattern(16, 10 + i), at);
    expect.push(pattern(16, 10 + i), big[i]!);
    void w.send(big[i]!);
  }
  await w.idle();
  assert(w.buf === stage, "a few staged bytes are copied out, the staging buffer kept");
  const want = new Uint8Array(expect.reduce((n, e) => n + e.length, 0));
  let at = 0;
  for (const e of expect) {
    want.set(e, at);
    at += e.length;
  }
  assertBytesEqual(conn.all(), want, "bytes in order");
});

Deno.test("WireWriter.claim on a full staging buffer moves to a new one: view read after", async () => {
  const conn = sink(1000);
  const size = 8192;
  const w = new WireWriter(conn, () => {}, size);
  const first = w.claim(size);
  w.buf.set(pattern(size, 5), first);
  const old = w.view;
  const at = w.claim(8);
  assert(w.view !== old, "the full buffer was queued and a new one staged");
  w.view.setUint32(at, 0x01020304);
  w.view.setUint32(at + 4, 0x05060708);
  await w.idle();
  const want = new Uint8Array(size + 8);
  want.set(pattern(size, 5));
  want.set([1, 2, 3, 4, 5, 6, 7, 8], size);
  assertBytesEqual(conn.all(), want, "both messages whole, in order, over partial writes");
});
