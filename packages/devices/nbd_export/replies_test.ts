import { assertBytesEqual, assertEquals } from "@blockgraph/drivers/conformance";
import {
  decodeReply,
  newReplyHeader,
  newRequestHeader,
  REPLY_FLAG_DONE,
  replyHeaderSize,
  ReplyType,
  WireWriter,
} from "@blockgraph/drivers/nbd";
import { HEAD_ROOM, Slot, type SlotHandlers } from "./request_slot.ts";
import { dataHead, replyBlockStatus, replyError, replyHole, replyOk } from "./replies.ts";

/** A writer whose written bytes are kept. */
function capture() {
  const out: Uint8Array[] = [];
  const w = new WireWriter({
    write: (p: Uint8Array) => {
      out.push(p.slice());
      return Promise.resolve(p.length);
    },
  });
  const bytes = async () => {
    await w.idle();
    const all = new Uint8Array(out.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of out) all.set(p, (at += p.length) - p.length);
    return all;
  };
  return { w, bytes };
}

/** Splits `bytes` into replies: each header, and its payload for structured chunks. */
function replies(bytes: Uint8Array) {
  const v = new DataView(bytes.buffer);
  const got = [];
  for (let at = 0; at < bytes.length;) {
    const h = newReplyHeader();
    const size = replyHeaderSize(v.getUint32(at));
    decodeReply(v, at, h);
    got.push({ ...h, payload: bytes.slice(at + size, at + size + h.length) });
    at += size + h.length;
  }
  return got;
}

const request = Object.assign(newRequestHeader(), { cookieHi: 1, cookieLo: 2 });

Deno.test("replies: done, errors, holes and block status as the client negotiated them", async () => {
  const { w, bytes } = capture();
  replyOk(w, false, request);
  replyError(w, false, request, 5, "ignored in a simple reply");
  replyOk(w, true, request);
  replyError(w, true, request, 22, "x".repeat(300));
  replyHole(w, request, 1 << 20, 65536, false);
  replyBlockStatus(w, request, [{ id: 1, extents: [{ length: 4096, flags: 3 }] }, {
    id: 2,
    extents: [],
  }]);
  const r = replies(await bytes());
  assertEquals(
    JSON.stringify(r.map((x) => [x.structured, x.error, x.type, x.flags, x.length])),
    JSON.stringify([
      [false, 0, 0, 0, 0],
      [false, 5, 0, 0, 0],
      [true, 0, ReplyType.NONE, REPLY_FLAG_DONE, 0],
      [true, 0, ReplyType.ERROR, REPLY_FLAG_DONE, 6 + 256],
      [true, 0, ReplyType.OFFSET_HOLE, 0, 12],
      [true, 0, ReplyType.BLOCK_STATUS, 0, 12],
      [true, 0, ReplyType.BLOCK_STATUS, REPLY_FLAG_DONE, 4],
    ]),
    "reply kinds",
  );
  assertEquals(r.every((x) => x.cookieHi === 1 && x.cookieLo === 2), true, "cookies echoed");
  const err = new DataView(r[3]!.payload.buffer);
  assertEquals(err.getUint32(0), 22, "error value");
  assertEquals(err.getUint16(4), 256, "message cut to 256 bytes");
  assertBytesEqual(r[4]!.payload, new Uint8Array([0, 0, 0, 0, 0, 16, 0, 0, 0, 1, 0, 0]), "hole");
  assertBytesEqual(r[5]!.payload, new Uint8Array([0, 0, 0, 1, 0, 0, 16, 0, 0, 0, 0, 3]), "extent");
});

Deno.test("replies: block status of QEMU's 131072 extents, past the staging buffer, goes out whole and in order", async () => {
  const { w, bytes } = capture();
  const many = Array.from({ length: 131072 }, (_, i) => ({ length: 4096, flags: i & 3 }));
  replyOk(w, true, request);
  replyBlockStatus(w, request, [{ id: 7, extents: many }, {
    id: 8,
    extents: [{ length: 1, flags: 1 }],
  }]);
  replyOk(w, true, request);
  const r = replies(await bytes());
  assertEquals(
    JSON.stringify(r.map((x) => [x.type, x.flags, x.length])),
    JSON.stringify([
      [ReplyType.NONE, REPLY_FLAG_DONE, 0],
      [ReplyType.BLOCK_STATUS, 0, 4 + 8 * 131072],
      [ReplyType.BLOCK_STATUS, REPLY_FLAG_DONE, 12],
      [ReplyType.NONE, REPLY_FLAG_DONE, 0],
    ]),
    "chunks",
  );
  const v = new DataView(r[1]!.payload.buffer);
  assertEquals(v.getUint32(0), 7, "context id");
  for (const i of [0, 1, 77777, 131071]) {
    assertEquals(`${v.getUint32(4 + 8 * i)},${v.getUint32(8 + 8 * i)}`, `4096,${i & 3}`, `${i}`);
  }
});

Deno.test("replies: a read reply's header sits right in front of the slot's data", () => {
  const none = () => {};
  const handlers: SlotHandlers = { read: none, wrote: none, failed: none, done: none };
  const slot = new Slot(handlers);
  Object.assign(slot.header, { cookieHi: 3, cookieLo: 4 });
  slot.vector(100).iov[0]!.fill(7);
  for (const structured of [false, true]) {
    const head = dataHead(slot, structured, 5000, 100, true);
    const msg = slot.message(head, 100);
    const h = newReplyHeader();
    decodeReply(new DataView(msg.buffer, msg.byteOffset), 0, h);
    assertEquals(h.structured, structured, "reply kind");
    assertEquals(h.cookieLo, 4, "cookie");
    assertEquals(h.length, structured ? 108 : 0, "chunk length: offset and data");
    assertEquals(msg.length, head + 100, "header and data");
    assertEquals(msg.byteOffset, HEAD_ROOM - head, "no copy: the slot's own buffer");
    if (structured) {
      assertEquals(new DataView(msg.buffer, msg.byteOffset).getUint32(24), 5000, "data offset");
    }
  }
});
