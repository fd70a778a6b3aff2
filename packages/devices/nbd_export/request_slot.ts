/**
 * One in-flight request of an NBD export connection: the reusable buffer, header and
 * vector a request is read into and its reply written from, with the completion callbacks
 * made once per slot so that the read and write fast paths allocate nothing per request.
 *
 * @module
 */

import { type HostReadSink, IoVector } from "@blockgraph/core";
import { newRequestHeader, type RequestHeader, type WireWriter } from "@blockgraph/drivers/nbd";

/** Slot buffers larger than this are dropped after use rather than kept. */
const KEEP_BUFFER = 1024 * 1024;

/**
 * Room in front of a slot's data for the reply header (simple 16 bytes, a data chunk 20 + 8),
 * so that a read reply goes out as one socket write, header and data together.
 */
export const HEAD_ROOM = 32;

/** What a slot's completion callbacks call: its connection's handlers. */
export interface SlotHandlers {
  /** A fast-path read finished: send its data. */
  read(slot: Slot): void;
  /** A fast-path write finished: acknowledge it. */
  wrote(slot: Slot): void;
  /** A fast-path request failed: answer the error. */
  failed(slot: Slot, e: unknown): void;
  /** The reply's buffer is free again: the slot can take the next request. */
  done(slot: Slot): void;
}

/**
 * A request in progress: its header, its payload buffer and a vector over it, and the
 * callbacks the fast path hands the backend's promise (made once per slot, so that a read
 * or a write allocates no closure).
 */
export class Slot {
  readonly header: RequestHeader = newRequestHeader();
  /** The payload at {@link HEAD_ROOM}, the reply header right before it. */
  buf: Uint8Array = new Uint8Array(0);
  view: DataView = new DataView(this.buf.buffer);
  readonly qiov: IoVector = new IoVector();
  /** The backend read into the slot. */
  readonly onRead: () => void;
  /** The backend wrote from the slot. */
  readonly onWrote: () => void;
  /** The backend failed the request. */
  readonly onFail: (e: unknown) => void;
  /** The writer is done with the slot's buffer. */
  readonly onSent: () => void;
  /** The writer {@link Slot.hostSink} queues on. */
  hostWriter: WireWriter | null = null;
  /** The size of the reply header in front of the data that {@link Slot.hostSink} sends. */
  hostHead = 0;
  /**
   * Sends the reply header in front of the slot's data, then the host file range it is
   * given, with {@link Slot.hostWriter} (a read served by `Backend.preadHost`).
   */
  readonly hostSink: HostReadSink;

  constructor(handlers: SlotHandlers) {
    this.onRead = () => handlers.read(this);
    this.onWrote = () => handlers.wrote(this);
    this.onFail = (e) => handlers.failed(this, e);
    this.onSent = () => handlers.done(this);
    this.hostSink = (fd, offset, bytes) =>
      this.hostWriter!.sendFile(
        this.buf.subarray(HEAD_ROOM - this.hostHead, HEAD_ROOM),
        fd,
        offset,
        bytes,
      );
  }

  /** A vector over the first `n` payload bytes of the slot's buffer, grown as needed. */
  vector(n: number): IoVector {
    if (this.buf.length < HEAD_ROOM + n) {
      this.buf = new Uint8Array(HEAD_ROOM + Math.max(n, 64 * 1024));
      this.view = new DataView(this.buf.buffer);
    }
    this.qiov.reset();
    this.qiov.add(this.buf.subarray(HEAD_ROOM, HEAD_ROOM + n));
    return this.qiov;
  }

  /** The `n` payload bytes preceded by the `head` header bytes before them. */
  message(head: number, n: number): Uint8Array {
    return this.buf.subarray(HEAD_ROOM - head, HEAD_ROOM + n);
  }

  /** Forgets a large buffer so an idle connection does not keep it. */
  trim(): void {
    if (this.buf.length > HEAD_ROOM + KEEP_BUFFER) {
      this.buf = new Uint8Array(0);
      this.view = new DataView(this.buf.buffer);
    }
    this.qiov.reset();
  }
}
