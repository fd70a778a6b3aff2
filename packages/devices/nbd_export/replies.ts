/**
 * The replies an NBD export connection sends, encoded where they go: data reply headers in
 * front of a request slot's data, and the small replies (done, error, hole, block status)
 * in the writer's staging buffer. Simple or structured as the client negotiated.
 *
 * `claim()` may move the writer to a fresh staging buffer: these read `w.view` after it,
 * never as an argument evaluated before it.
 *
 * @module
 */

import {
  encodeChunkHeader,
  encodeErrorPayload,
  encodeSimpleReply,
  REPLY_FLAG_DONE,
  ReplyType,
  type RequestHeader,
  setU64,
  SIMPLE_REPLY_SIZE,
  STRUCTURED_REPLY_SIZE,
  type WireWriter,
} from "@blockgraph/drivers/nbd";
import { HEAD_ROOM, type Slot } from "./request_slot.ts";

/** The header in front of an OFFSET_DATA chunk's data: the chunk header and the offset. */
export const DATA_HEAD = STRUCTURED_REPLY_SIZE + 8;

/** The block status extents of one metadata context. */
export interface ContextExtents {
  /** The context id the client was given. */
  id: number;
  /** The extents, in order. */
  extents: { length: number; flags: number }[];
}

/**
 * Writes the header of a read reply in front of the slot's data: an OFFSET_DATA chunk for
 * `n` bytes at `offset` (structured), or a simple reply; returns the header's size.
 */
export function dataHead(
  slot: Slot,
  structured: boolean,
  offset: number,
  n: number,
  last: boolean,
): number {
  const h = slot.header;
  const v = slot.view;
  if (!structured) {
    encodeSimpleReply(v, HEAD_ROOM - SIMPLE_REPLY_SIZE, 0, h.cookieHi, h.cookieLo);
    return SIMPLE_REPLY_SIZE;
  }
  const at = HEAD_ROOM - DATA_HEAD;
  const flags = last ? REPLY_FLAG_DONE : 0;
  encodeChunkHeader(v, at, flags, ReplyType.OFFSET_DATA, h.cookieHi, h.cookieLo, n + 8);
  setU64(v, at + STRUCTURED_REPLY_SIZE, offset);
  return DATA_HEAD;
}

/** Queues the success reply of a request with no data. */
export function replyOk(w: WireWriter, structured: boolean, h: RequestHeader): void {
  if (structured) {
    const at = w.claim(STRUCTURED_REPLY_SIZE);
    encodeChunkHeader(w.view, at, REPLY_FLAG_DONE, ReplyType.NONE, h.cookieHi, h.cookieLo, 0);
  } else {
    const at = w.claim(SIMPLE_REPLY_SIZE);
    encodeSimpleReply(w.view, at, 0, h.cookieHi, h.cookieLo);
  }
}

/** Queues an error reply: the NBD error value, and (structured) up to 256 bytes of message. */
export function replyError(
  w: WireWriter,
  structured: boolean,
  h: RequestHeader,
  errno: number,
  message: string,
): void {
  if (!structured) {
    const at = w.claim(SIMPLE_REPLY_SIZE);
    encodeSimpleReply(w.view, at, errno, h.cookieHi, h.cookieLo);
    return;
  }
  const payload = encodeErrorPayload(errno, message.slice(0, 256));
  const at = w.claim(STRUCTURED_REPLY_SIZE + payload.length);
  const len = payload.length;
  encodeChunkHeader(w.view, at, REPLY_FLAG_DONE, ReplyType.ERROR, h.cookieHi, h.cookieLo, len);
  w.buf.set(payload, at + STRUCTURED_REPLY_SIZE);
}

/** Queues an OFFSET_HOLE chunk: `n` bytes at `offset` read as zeros. */
export function replyHole(
  w: WireWriter,
  h: RequestHeader,
  offset: number,
  n: number,
  last: boolean,
): void {
  const at = w.claim(STRUCTURED_REPLY_SIZE + 12);
  const flags = last ? REPLY_FLAG_DONE : 0;
  encodeChunkHeader(w.view, at, flags, ReplyType.OFFSET_HOLE, h.cookieHi, h.cookieLo, 12);
  setU64(w.view, at + STRUCTURED_REPLY_SIZE, offset);
  w.view.setUint32(at + STRUCTURED_REPLY_SIZE + 8, n);
}

/** Queues one BLOCK_STATUS chunk per context, the last one marked done. */
export function replyBlockStatus(
  w: WireWriter,
  h: RequestHeader,
  replies: readonly ContextExtents[],
): void {
  replies.forEach((r, i) => {
    const len = 4 + 8 * r.extents.length;
    const size = STRUCTURED_REPLY_SIZE + len;
    // A chunk larger than the writer's staging buffer takes, up to QEMU's 1 MiB of extents,
    // is encoded on its own and queued whole.
    const own = size > BIG_CHUNK ? new Uint8Array(size) : null;
    const at = own ? 0 : w.claim(size);
    const view = own ? new DataView(own.buffer) : w.view;
    const flags = i === replies.length - 1 ? REPLY_FLAG_DONE : 0;
    encodeChunkHeader(view, at, flags, ReplyType.BLOCK_STATUS, h.cookieHi, h.cookieLo, len);
    let p = at + STRUCTURED_REPLY_SIZE;
    view.setUint32(p, r.id);
    p += 4;
    for (const e of r.extents) {
      view.setUint32(p, e.length);
      view.setUint32(p + 4, e.flags);
      p += 8;
    }
    if (own) void w.send(own);
  });
}

/** Chunks up to this size are encoded into the writer's staging buffer. */
const BIG_CHUNK = 64 * 1024;
