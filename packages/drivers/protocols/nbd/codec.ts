/**
 * Encoding and decoding of NBD messages: the greeting, option requests and replies (with their
 * INFO, SERVER and META_CONTEXT payloads), transmission requests, simple replies and structured
 * reply chunks. Everything works on caller-owned buffers at an offset, so the hot path
 * (request headers, reply headers) allocates nothing.
 *
 * 64-bit offsets and sizes are JavaScript numbers: values at or above 2^53 decode as
 * `Infinity`, which every range check refuses. Cookies (handles) are kept as two 32-bit
 * halves so a server echoes them bit for bit.
 *
 * @module
 */

import {
  HandshakeFlags,
  NBD_MAGIC,
  NBD_OPTS_MAGIC,
  NBD_REP_MAGIC,
  NBD_REQUEST_MAGIC,
  NBD_SIMPLE_REPLY_MAGIC,
  NBD_STRUCTURED_REPLY_MAGIC,
  OPTION_REPLY_SIZE,
  OPTION_REQUEST_SIZE,
  REQUEST_SIZE,
  SIMPLE_REPLY_SIZE,
  STRUCTURED_REPLY_SIZE,
} from "./constants.ts";

const TWO_32 = 2 ** 32;
const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8", { fatal: true });

/** A DataView over `buf`, whatever its offset in its ArrayBuffer. */
export function viewOf(buf: Uint8Array): DataView {
  return new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
}

/** Reads an unsigned 64-bit value as a number (`Infinity` at or above 2^53). */
export function getU64(v: DataView, at: number): number {
  const hi = v.getUint32(at);
  const lo = v.getUint32(at + 4);
  return hi >= 0x200000 ? Infinity : hi * TWO_32 + lo;
}

/** Writes a non-negative safe integer as an unsigned 64-bit value. */
export function setU64(v: DataView, at: number, value: number): void {
  v.setUint32(at, Math.floor(value / TWO_32));
  v.setUint32(at + 4, value >>> 0);
}

/** UTF-8 bytes of a string. */
export function utf8(text: string): Uint8Array {
  return encoder.encode(text);
}

/** Decodes UTF-8; throws on invalid sequences. */
export function fromUtf8(bytes: Uint8Array): string {
  return decoder.decode(bytes);
}

// ---------------------------------------------------------------- handshake

/** The size of the server's greeting. */
export const GREETING_SIZE = 18;

/** The server's greeting: NBDMAGIC, IHAVEOPT and the handshake flags. */
export function encodeGreeting(
  flags: number = HandshakeFlags.FIXED_NEWSTYLE | HandshakeFlags.NO_ZEROES,
): Uint8Array {
  const out = new Uint8Array(GREETING_SIZE);
  const v = viewOf(out);
  v.setBigUint64(0, NBD_MAGIC);
  v.setBigUint64(8, NBD_OPTS_MAGIC);
  v.setUint16(16, flags);
  return out;
}

/**
 * Decodes the server's greeting; returns the handshake flags, or throws when the magics say
 * this is not a newstyle NBD server.
 */
export function decodeGreeting(buf: Uint8Array): number {
  const v = viewOf(buf);
  if (v.getBigUint64(0) !== NBD_MAGIC) throw new Error("The server did not send the NBD magic");
  if (v.getBigUint64(8) !== NBD_OPTS_MAGIC) {
    throw new Error("The server does not speak newstyle NBD (oldstyle servers are not supported)");
  }
  return v.getUint16(16);
}

/** An option request header. */
export interface OptionHeader {
  /** The option code ({@link Opt}). */
  option: number;
  /** The length of the data that follows. */
  length: number;
}

/** Encodes an option request with its data. */
export function encodeOption(option: number, data: Uint8Array = new Uint8Array(0)): Uint8Array {
  const out = new Uint8Array(OPTION_REQUEST_SIZE + data.length);
  const v = viewOf(out);
  v.setBigUint64(0, NBD_OPTS_MAGIC);
  v.setUint32(8, option);
  v.setUint32(12, data.length);
  out.set(data, OPTION_REQUEST_SIZE);
  return out;
}

/** Decodes an option request header; `null` when the magic is wrong. */
export function decodeOptionHeader(buf: Uint8Array): OptionHeader | null {
  const v = viewOf(buf);
  if (v.getBigUint64(0) !== NBD_OPTS_MAGIC) return null;
  return { option: v.getUint32(8), length: v.getUint32(12) };
}

/** An option reply header. */
export interface OptionReplyHeader {
  /** The option this answers. */
  option: number;
  /** The reply type ({@link Rep}). */
  type: number;
  /** The length of the data that follows. */
  length: number;
}

/** Encodes an option reply with its data. */
export function encodeOptionReply(
  option: number,
  type: number,
  data: Uint8Array = new Uint8Array(0),
): Uint8Array {
  const out = new Uint8Array(OPTION_REPLY_SIZE + data.length);
  const v = viewOf(out);
  v.setBigUint64(0, NBD_REP_MAGIC);
  v.setUint32(8, option);
  v.setUint32(12, type);
  v.setUint32(16, data.length);
  out.set(data, OPTION_REPLY_SIZE);
  return out;
}

/** Decodes an option reply header; throws when the magic is wrong. */
export function decodeOptionReplyHeader(buf: Uint8Array): OptionReplyHeader {
  const v = viewOf(buf);
  if (v.getBigUint64(0) !== NBD_REP_MAGIC) throw new Error("Bad option reply magic");
  return { option: v.getUint32(8), type: v.getUint32(12), length: v.getUint32(16) };
}

/** A length-prefixed (u32) string followed by `tail`. */
function u32String(text: string, tail: Uint8Array = new Uint8Array(0)): Uint8Array {
  const s = utf8(text);
  const out = new Uint8Array(4 + s.length + tail.length);
  viewOf(out).setUint32(0, s.length);
  out.set(s, 4);
  out.set(tail, 4 + s.length);
  return out;
}

/** The data of NBD_OPT_INFO and NBD_OPT_GO: the export name and the information asked for. */
export function encodeInfoRequest(name: string, infos: readonly number[]): Uint8Array {
  const tail = new Uint8Array(2 + 2 * infos.length);
  const v = viewOf(tail);
  v.setUint16(0, infos.length);
  infos.forEach((info, i) => v.setUint16(2 + 2 * i, info));
  return u32String(name, tail);
}

/** What NBD_OPT_INFO or NBD_OPT_GO asks for. */
export interface InfoRequest {
  /** The export name. */
  name: string;
  /** The information types asked for ({@link Info}). */
  infos: number[];
}

/** Decodes the data of NBD_OPT_INFO/GO; `null` when its lengths do not add up. */
export function decodeInfoRequest(data: Uint8Array): InfoRequest | null {
  if (data.length < 6) return null;
  const v = viewOf(data);
  const nameLen = v.getUint32(0);
  if (nameLen > data.length - 6) return null;
  const count = v.getUint16(4 + nameLen);
  if (data.length !== 6 + nameLen + 2 * count) return null;
  const infos: number[] = [];
  for (let i = 0; i < count; i++) infos.push(v.getUint16(6 + nameLen + 2 * i));
  try {
    return { name: fromUtf8(data.subarray(4, 4 + nameLen)), infos };
  } catch {
    return null;
  }
}

/** The data of NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT. */
export function encodeMetaContextRequest(name: string, queries: readonly string[]): Uint8Array {
  const parts = queries.map((q) => u32String(q));
  const size = parts.reduce((n, p) => n + p.length, 4);
  const tail = new Uint8Array(size);
  viewOf(tail).setUint32(0, queries.length);
  let at = 4;
  for (const p of parts) {
    tail.set(p, at);
    at += p.length;
  }
  return u32String(name, tail);
}

/** What a meta context option asks for. */
export interface MetaContextRequest {
  /** The export name. */
  name: string;
  /** The queries (`base:allocation`, `qemu:`, ...). */
  queries: string[];
}

/** Decodes the data of a meta context option; `null` when its lengths do not add up. */
export function decodeMetaContextRequest(data: Uint8Array): MetaContextRequest | null {
  if (data.length < 8) return null;
  const v = viewOf(data);
  const nameLen = v.getUint32(0);
  if (nameLen > data.length - 8) return null;
  try {
    const name = fromUtf8(data.subarray(4, 4 + nameLen));
    const count = v.getUint32(4 + nameLen);
    let at = 8 + nameLen;
    const queries: string[] = [];
    for (let i = 0; i < count; i++) {
      if (data.length - at < 4) return null;
      const len = v.getUint32(at);
      if (len > data.length - at - 4) return null;
      queries.push(fromUtf8(data.subarray(at + 4, at + 4 + len)));
      at += 4 + len;
    }
    return at === data.length ? { name, queries } : null;
  } catch {
    return null;
  }
}

/** NBD_REP_SERVER data: an export name and its description. */
export function encodeServerReply(name: string, description: string): Uint8Array {
  return u32String(name, utf8(description));
}

/** Decodes NBD_REP_SERVER data into name and description. */
export function decodeServerReply(data: Uint8Array): { name: string; description: string } {
  const len = viewOf(data).getUint32(0);
  return {
    name: fromUtf8(data.subarray(4, 4 + len)),
    description: fromUtf8(data.subarray(4 + len)),
  };
}

/** NBD_REP_META_CONTEXT data: a context id and its name. */
export function encodeMetaContextReply(id: number, name: string): Uint8Array {
  const s = utf8(name);
  const out = new Uint8Array(4 + s.length);
  viewOf(out).setUint32(0, id);
  out.set(s, 4);
  return out;
}

/** Decodes NBD_REP_META_CONTEXT data. */
export function decodeMetaContextReply(data: Uint8Array): { id: number; name: string } {
  return { id: viewOf(data).getUint32(0), name: fromUtf8(data.subarray(4)) };
}

/** NBD_INFO_EXPORT: the size and the transmission flags. */
export function encodeInfoExport(size: number, flags: number): Uint8Array {
  const out = new Uint8Array(12);
  const v = viewOf(out);
  v.setUint16(0, 0);
  setU64(v, 2, size);
  v.setUint16(10, flags);
  return out;
}

/** NBD_INFO_NAME or NBD_INFO_DESCRIPTION: a type and a string. */
export function encodeInfoString(type: number, text: string): Uint8Array {
  const s = utf8(text);
  const out = new Uint8Array(2 + s.length);
  viewOf(out).setUint16(0, type);
  out.set(s, 2);
  return out;
}

/** Block size constraints of an export. */
export interface BlockSizes {
  /** Offsets and lengths are multiples of this (a power of two, 1 to 64 KiB). */
  minimum: number;
  /** The size requests should be a multiple of to avoid read-modify-write. */
  preferred: number;
  /** The largest payload a request may carry. */
  maximum: number;
}

/** NBD_INFO_BLOCK_SIZE: the three constraints. */
export function encodeInfoBlockSize(sizes: BlockSizes): Uint8Array {
  const out = new Uint8Array(14);
  const v = viewOf(out);
  v.setUint16(0, 3);
  v.setUint32(2, sizes.minimum);
  v.setUint32(6, sizes.preferred);
  v.setUint32(10, sizes.maximum);
  return out;
}

/** The reply to NBD_OPT_EXPORT_NAME: size, flags and (unless NO_ZEROES) 124 zero bytes. */
export function encodeExportNameReply(size: number, flags: number, noZeroes: boolean): Uint8Array {
  const out = new Uint8Array(noZeroes ? 10 : 134);
  const v = viewOf(out);
  setU64(v, 0, size);
  v.setUint16(8, flags);
  return out;
}

// ---------------------------------------------------------------- transmission

/** A decoded transmission request header, reused from request to request. */
export interface RequestHeader {
  /** Command flags ({@link CmdFlags}). */
  flags: number;
  /** The command ({@link Cmd}). */
  type: number;
  /** The high half of the cookie. */
  cookieHi: number;
  /** The low half of the cookie. */
  cookieLo: number;
  /** The byte offset (`Infinity` when at or above 2^53). */
  offset: number;
  /** The byte length. */
  length: number;
}

/** A fresh request header object to decode into. */
export function newRequestHeader(): RequestHeader {
  return { flags: 0, type: 0, cookieHi: 0, cookieLo: 0, offset: 0, length: 0 };
}

/** Encodes a request header at `at` of `v`. */
export function encodeRequest(v: DataView, at: number, r: RequestHeader): void {
  v.setUint32(at, NBD_REQUEST_MAGIC);
  v.setUint16(at + 4, r.flags);
  v.setUint16(at + 6, r.type);
  v.setUint32(at + 8, r.cookieHi);
  v.setUint32(at + 12, r.cookieLo);
  setU64(v, at + 16, r.offset);
  v.setUint32(at + 24, r.length);
}

/**
 * Decodes the request header at `at` of `v` into `out`; returns false (leaving `out`
 * undefined) when the magic is wrong.
 */
export function decodeRequest(v: DataView, at: number, out: RequestHeader): boolean {
  if (v.getUint32(at) !== NBD_REQUEST_MAGIC) return false;
  out.flags = v.getUint16(at + 4);
  out.type = v.getUint16(at + 6);
  out.cookieHi = v.getUint32(at + 8);
  out.cookieLo = v.getUint32(at + 12);
  out.offset = getU64(v, at + 16);
  out.length = v.getUint32(at + 24);
  return true;
}

/** Encodes a simple reply header at `at` of `v`. */
export function encodeSimpleReply(
  v: DataView,
  at: number,
  error: number,
  cookieHi: number,
  cookieLo: number,
): void {
  v.setUint32(at, NBD_SIMPLE_REPLY_MAGIC);
  v.setUint32(at + 4, error);
  v.setUint32(at + 8, cookieHi);
  v.setUint32(at + 12, cookieLo);
}

/** Encodes a structured reply chunk header at `at` of `v`. */
export function encodeChunkHeader(
  v: DataView,
  at: number,
  flags: number,
  type: number,
  cookieHi: number,
  cookieLo: number,
  length: number,
): void {
  v.setUint32(at, NBD_STRUCTURED_REPLY_MAGIC);
  v.setUint16(at + 4, flags);
  v.setUint16(at + 6, type);
  v.setUint32(at + 8, cookieHi);
  v.setUint32(at + 12, cookieLo);
  v.setUint32(at + 16, length);
}

/** A decoded reply header, simple or structured, reused from reply to reply. */
export interface ReplyHeader {
  /** Whether this is a structured reply chunk. */
  structured: boolean;
  /** Simple replies: the error value. */
  error: number;
  /** Structured chunks: the flags ({@link REPLY_FLAG_DONE}). */
  flags: number;
  /** Structured chunks: the chunk type ({@link ReplyType}). */
  type: number;
  /** The high half of the cookie. */
  cookieHi: number;
  /** The low half of the cookie. */
  cookieLo: number;
  /** Structured chunks: the payload length. */
  length: number;
}

/** A fresh reply header object to decode into. */
export function newReplyHeader(): ReplyHeader {
  return { structured: false, error: 0, flags: 0, type: 0, cookieHi: 0, cookieLo: 0, length: 0 };
}

/** The header size of the reply starting with `magic`, or 0 when the magic is unknown. */
export function replyHeaderSize(magic: number): number {
  if (magic === NBD_SIMPLE_REPLY_MAGIC) return SIMPLE_REPLY_SIZE;
  if (magic === NBD_STRUCTURED_REPLY_MAGIC) return STRUCTURED_REPLY_SIZE;
  return 0;
}

/**
 * Decodes the reply header at `at` of `v` into `out` (the caller checked the magic with
 * {@link replyHeaderSize} and has that many bytes).
 */
export function decodeReply(v: DataView, at: number, out: ReplyHeader): void {
  if (v.getUint32(at) === NBD_SIMPLE_REPLY_MAGIC) {
    out.structured = false;
    out.error = v.getUint32(at + 4);
    out.cookieHi = v.getUint32(at + 8);
    out.cookieLo = v.getUint32(at + 12);
    out.flags = 0;
    out.type = 0;
    out.length = 0;
    return;
  }
  out.structured = true;
  out.error = 0;
  out.flags = v.getUint16(at + 4);
  out.type = v.getUint16(at + 6);
  out.cookieHi = v.getUint32(at + 8);
  out.cookieLo = v.getUint32(at + 12);
  out.length = v.getUint32(at + 16);
}

/** The payload of an error chunk: the error value, a message, and optionally an offset. */
export function encodeErrorPayload(error: number, message: string, offset?: number): Uint8Array {
  let m = utf8(message);
  if (m.length > 4096) m = m.subarray(0, 4096);
  const out = new Uint8Array(6 + m.length + (offset === undefined ? 0 : 8));
  const v = viewOf(out);
  v.setUint32(0, error);
  v.setUint16(4, m.length);
  out.set(m, 6);
  if (offset !== undefined) setU64(v, 6 + m.length, offset);
  return out;
}

/** Decodes an error chunk's payload; `null` when its lengths do not add up. */
export function decodeErrorPayload(
  data: Uint8Array,
): { error: number; message: string; offset?: number } | null {
  if (data.length < 6) return null;
  const v = viewOf(data);
  const len = v.getUint16(4);
  if (len > data.length - 6) return null;
  let message: string;
  try {
    message = fromUtf8(data.subarray(6, 6 + len));
  } catch {
    message = "";
  }
  const error = v.getUint32(0);
  if (data.length - 6 - len >= 8) return { error, message, offset: getU64(v, 6 + len) };
  return { error, message };
}

/** The header sizes, re-exported for callers that size buffers. */
export {
  OPTION_REPLY_SIZE,
  OPTION_REQUEST_SIZE,
  REQUEST_SIZE,
  SIMPLE_REPLY_SIZE,
  STRUCTURED_REPLY_SIZE,
};
