/**
 * Buffered socket I/O for NBD, shared by the server and the client: a reader that parses
 * headers straight out of one receive buffer and reads large payloads directly into their
 * destination, and a writer that coalesces every message queued while a write is in flight
 * into the next single socket write, and on a server can send a header and a range of a
 * host file with `sendfile(2)` in turn among the other messages.
 *
 * @module
 */

import { sendHeadAndRange, sendNow } from "../../io/host_send.ts";

/** What the reader needs of a connection. */
export interface ReadableConn {
  /** Reads into `p`; resolves to the byte count, or null at end of stream. */
  read(p: Uint8Array): Promise<number | null>;
}

/** What the writer needs of a connection. */
export interface WritableConn {
  /** Writes some of `p`; resolves to the byte count written. */
  write(p: Uint8Array): Promise<number>;
}

/** The peer closed the stream in the middle of a message. */
export class UnexpectedEof extends Error {
  /** Creates the error. */
  constructor() {
    super("The connection was closed in the middle of a message");
    this.name = "UnexpectedEof";
  }
}

/**
 * A receive buffer over a connection. Callers look at `buf[pos..pos+available)` after
 * {@link WireReader.need} and advance with {@link WireReader.consume}.
 *
 * It reads with Deno's `read`, even where the socket's descriptor is known. Tried (session
 * 17, NBD 4 KiB random writes at depth 32 over TCP, 100k requests, 6 alternating rounds): a
 * nonblocking recv(2) over FFI first, Deno's read only when nothing was waiting, was slower
 * in every round (about 7%): half the tries found nothing (twice the recv calls) and the
 * epoll waits saved did not pay for them. Sending each writer run with send(2) instead of
 * Deno's write made more and smaller sends (35-40k against 22-26k), as nothing gathers
 * replies while a write is under way.
 */
export class WireReader {
  /** The receive buffer. */
  readonly buf: Uint8Array;
  /** A DataView over the receive buffer. */
  readonly view: DataView;
  /** Where unread data begins. */
  pos = 0;
  #end = 0;
  #conn: ReadableConn;

  /** Creates a reader with a receive buffer of `size` bytes. */
  constructor(conn: ReadableConn, size = 256 * 1024) {
    this.#conn = conn;
    this.buf = new Uint8Array(size);
    this.view = new DataView(this.buf.buffer);
  }

  /**
   * Reads from `conn` from now on (the TLS layer after STARTTLS). Nothing may be buffered:
   * bytes sent before the upgrade that were not consumed would be a peer out of step.
   */
  setConn(conn: ReadableConn): void {
    if (this.available !== 0) throw new Error("Data arrived before the TLS upgrade");
    this.#conn = conn;
  }

  /** How many unread bytes are buffered. */
  get available(): number {
    return this.#end - this.pos;
  }

  /**
   * Makes at least `n` bytes (at most the buffer size) available. Resolves false at a clean
   * end of stream before any of them arrived; throws {@link UnexpectedEof} when the stream
   * ends part way.
   */
  async need(n: number): Promise<boolean> {
    if (this.#end - this.pos >= n) return true;
    if (this.buf.length - this.pos < n) {
      this.buf.copyWithin(0, this.pos, this.#end);
      this.#end -= this.pos;
      this.pos = 0;
    }
    while (this.#end - this.pos < n) {
      const got = await this.#conn.read(this.buf.subarray(this.#end));
      if (got === null || got === 0) {
        if (this.#end === this.pos) return false;
        throw new UnexpectedEof();
      }
      this.#end += got;
    }
    return true;
  }

  /** Skips `n` buffered bytes. */
  consume(n: number): void {
    this.pos += n;
    if (this.pos === this.#end) this.pos = this.#end = 0;
  }

  /** Reads exactly `dst.length` bytes: the buffered ones first, then straight from the socket. */
  async readInto(dst: Uint8Array): Promise<void> {
    const have = Math.min(this.available, dst.length);
    dst.set(this.buf.subarray(this.pos, this.pos + have));
    this.consume(have);
    let at = have;
    while (at < dst.length) {
      const got = await this.#conn.read(dst.subarray(at));
      if (got === null || got === 0) throw new UnexpectedEof();
      at += got;
    }
  }

  /** Reads exactly `n` bytes into a new buffer (for the handshake, not the hot path). */
  async readBytes(n: number): Promise<Uint8Array> {
    const out = new Uint8Array(n);
    await this.readInto(out);
    return out;
  }

  /** Reads and drops `n` bytes. */
  async skip(n: number): Promise<void> {
    while (n > 0) {
      if (!(await this.need(1))) throw new UnexpectedEof();
      const k = Math.min(n, this.available);
      this.consume(k);
      n -= k;
    }
  }
}

/** Messages at least this long are written from the caller's buffer instead of copied. */
const LARGE = 64 * 1024;
/** A staging buffer sealed with at most this many bytes is copied out instead of swapped. */
const SEAL_COPY = 4096;

interface Pending {
  data: Uint8Array;
  done: (() => void) | null;
  /** A file range sent after `data` (see {@link WireWriter.sendFile}); -1 for none. */
  fd: number;
  offset: number;
  bytes: number;
  fail: ((e: Error) => void) | null;
}

function message(data: Uint8Array, done: (() => void) | null): Pending {
  return { data, done, fd: -1, offset: 0, bytes: 0, fail: null };
}

/**
 * A send queue over a connection. Small messages are built in (or copied into) a staging
 * buffer, so the caller's buffers are free at once; large ones are written from the caller's
 * buffer, which it gets back when the returned promise settles. Everything queued while a
 * write is in flight goes out together in the next write, in order.
 */
export class WireWriter {
  #conn: WritableConn;
  readonly #stageSize: number;
  /** The staging buffer messages are built in; valid until the caller's task ends. */
  buf: Uint8Array;
  /** A DataView over {@link WireWriter.buf}. */
  view: DataView;
  #used = 0;
  readonly #spares: Uint8Array[] = [];
  readonly #queue: Pending[] = [];
  #running = false;
  /** A write or sendfile of the queue is under way. */
  #busy = false;
  #failed: Error | null = null;
  readonly #onError: (e: Error) => void;
  #idleWaiters: (() => void)[] = [];
  #sock = -1;
  #flushes = false;

  /** Creates a writer; `onError` hears about the first failed write (the peer went away). */
  constructor(conn: WritableConn, onError: (e: Error) => void = () => {}, stageSize = 256 * 1024) {
    this.#conn = conn;
    this.#onError = onError;
    this.#stageSize = stageSize;
    this.buf = new Uint8Array(stageSize);
    this.view = new DataView(this.buf.buffer);
  }

  /** Writes to `conn` from now on (the TLS layer after STARTTLS); call when {@link WireWriter.idle} resolved. */
  setConn(conn: WritableConn): void {
    if (this.#running || this.#used > 0 || this.#queue.length > 0) {
      throw new Error("The writer is busy: wait for idle() before switching connections");
    }
    this.#conn = conn;
    this.#sock = -1;
    this.#flushes = false;
  }

  /**
   * Lets {@link WireWriter.sendFile} write straight to socket descriptor `fd`, the one under
   * the connection (`ListenerSockets` finds it); -1 stops it. With `flushes`,
   * {@link WireWriter.flush} sends on it too. The descriptor is the connection's: the writer
   * only sends on it, between its own writes, and the caller must not close the connection
   * before {@link WireWriter.idle} resolves.
   */
  setSocket(fd: number, flushes = false): void {
    this.#sock = fd;
    this.#flushes = fd >= 0 && flushes;
  }

  /** Whether {@link WireWriter.sendFile} can be used: a socket is set and nothing failed. */
  get sendsFiles(): boolean {
    return this.#sock >= 0 && this.#failed === null;
  }

  /**
   * Queues `head` followed by `bytes` bytes of host file `fd` from `offset`, sent with
   * `sendfile(2)` on the socket (see `host_send.ts`) in its turn among the queued messages.
   * Resolves once all of it is in the socket, when `head` and the file may be let go; rejects
   * when the writer failed, before or during this message (the connection is then lost).
   * Only while {@link WireWriter.sendsFiles}.
   */
  sendFile(head: Uint8Array, fd: number, offset: number, bytes: number): Promise<void> {
    if (this.#failed) return Promise.reject(this.#failed);
    if (this.#sock < 0) {
      return Promise.reject(new Error("The writer has no socket to send files on"));
    }
    this.#sealStage();
    return new Promise((resolve, reject) => {
      this.#queue.push({ data: head, done: resolve, fd, offset, bytes, fail: reject });
      this.#kick();
    });
  }

  /** The error that stopped the writer, if any. */
  get failed(): Error | null {
    return this.#failed;
  }

  /**
   * Reserves `n` bytes (at most the staging size) of {@link WireWriter.buf} and returns their
   * offset; the caller fills them before it next awaits, and they go out with the next write.
   * A full staging buffer is replaced by a fresh one here, so read {@link WireWriter.buf} and
   * {@link WireWriter.view} after the call (`encode(w.view, w.claim(n))` writes into the old,
   * already queued buffer: JavaScript evaluates `w.view` first).
   */
  claim(n: number): number {
    if (this.#used + n > this.buf.length) this.#sealStage();
    const at = this.#used;
    this.#used += n;
    this.#kick();
    return at;
  }

  /** Queues a copy of `data`. */
  copy(data: Uint8Array): void {
    if (data.length >= LARGE) {
      this.#sealStage();
      this.#queue.push(message(data.slice(), null));
      this.#kick();
      return;
    }
    const at = this.claim(data.length);
    this.buf.set(data, at);
  }

  /**
   * Queues `data`, without copying when it is large; resolves when the caller may reuse it
   * (at once for small data, after the write for large data, or when the writer failed).
   */
  send(data: Uint8Array): Promise<void> | null {
    if (data.length < LARGE) {
      const at = this.claim(data.length);
      this.buf.set(data, at);
      return null;
    }
    if (this.#failed) return null;
    this.#sealStage();
    return new Promise((resolve) => {
      this.#queue.push(message(data, resolve));
      this.#kick();
    });
  }

  /**
   * Sends what is staged now, with one nonblocking `send(2)` on the socket's descriptor
   * (set with `flushes`, see {@link WireWriter.setSocket}), when nothing else is queued or
   * being written; otherwise, and for whatever the socket does not take, the queued write
   * sends it at the end of the task as usual. A server calls it after each complete reply,
   * so the client can start on one reply while the server works on the next. NBD 4 KiB
   * random reads at depth 32 over a unix socket beside qemu-nbd: the bench case, 4 rounds in
   * each tree, alternating, 0.83-0.84x -> 0.86-0.91x its rate; warm runs on one server,
   * medians of 15 alternating rounds, 0.82x -> 0.92x (shorter series on a noisy machine
   * ranged from slightly worse to 0.10x better); server CPU per read 10-20% higher (a send
   * per reply); writes within noise (1.53x / 1.50x). Over TCP loopback, where each send also
   * delivers to the peer's socket, it cost more than it gained (reads 1.17x -> 0.98x nbdkit,
   * writes 0.87x -> 0.76x), so TCP connections keep one write per task.
   */
  flush(): void {
    if (
      !this.#flushes || this.#busy || this.#used === 0 || this.#queue.length > 0 ||
      this.#failed !== null
    ) return;
    let n: number;
    try {
      n = sendNow(this.#sock, this.buf.subarray(0, this.#used));
    } catch (e) {
      this.#fail(e);
      return;
    }
    if (n < this.#used) this.buf.copyWithin(0, n, this.#used);
    this.#used -= n;
  }

  #fail(e: unknown): void {
    this.#failed = e instanceof Error ? e : new Error(String(e));
    this.#onError(this.#failed);
  }

  /** Resolves once everything queued so far has been written (or the writer failed). */
  idle(): Promise<void> {
    if (!this.#running && this.#used === 0 && this.#queue.length === 0) {
      return Promise.resolve();
    }
    return new Promise((r) => this.#idleWaiters.push(r));
  }

  #sealStage(): void {
    if (this.#used === 0) return;
    if (this.#used <= SEAL_COPY) {
      // A few headers ahead of a large message: copy them out and keep the staging buffer,
      // rather than leave it to the queue and zero-fill a fresh one (a 256 KiB allocation
      // per 256 KiB read reply: nbdcopy spent 10% of the server's CPU in it).
      this.#queue.push(message(this.buf.slice(0, this.#used), null));
      this.#used = 0;
      return;
    }
    this.#queue.push(message(this.buf.subarray(0, this.#used), null));
    this.buf = this.#spares.pop() ?? new Uint8Array(this.#stageSize);
    this.view = new DataView(this.buf.buffer);
    this.#used = 0;
  }

  #kick(): void {
    if (this.#running) return;
    this.#running = true;
    // Start after the current task, so replies completed together share one write.
    queueMicrotask(() => void this.#run());
  }

  async #run(): Promise<void> {
    for (;;) {
      if (this.#queue.length === 0) this.#sealStage();
      const item = this.#queue.shift();
      if (!item) break;
      if (!this.#failed) {
        this.#busy = true;
        try {
          if (item.fd < 0) await this.#writeAll(item.data);
          else await sendHeadAndRange(this.#sock, item.data, item.fd, item.offset, item.bytes);
        } catch (e) {
          this.#fail(e);
        }
        this.#busy = false;
      }
      if (item.fail && this.#failed) item.fail(this.#failed);
      else if (item.done) item.done();
      else if (item.data.buffer.byteLength === this.#stageSize && this.#spares.length < 2) {
        this.#spares.push(new Uint8Array(item.data.buffer));
      }
    }
    this.#running = false;
    const waiters = this.#idleWaiters;
    this.#idleWaiters = [];
    for (const w of waiters) w();
  }

  async #writeAll(data: Uint8Array): Promise<void> {
    let at = 0;
    while (at < data.length) {
      at += await this.#conn.write(at === 0 ? data : data.subarray(at));
    }
  }
}
