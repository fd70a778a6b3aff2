/**
 * The client side of one NBD export: the connection, pipelined requests matched to their
 * replies by cookie, simple and structured replies, and reconnection, as QEMU 7.2's client
 * does it. When the connection is lost, requests in flight and new ones wait while the client
 * reconnects for up to `reconnectDelay` seconds, counted from the first request that needs
 * the connection, and are then sent again; after that they fail with EIO, and each later
 * request tries to reconnect once before it fails. Without `reconnectDelay` requests in
 * flight fail at once and each new request tries to reconnect once.
 *
 * @module
 */

import { BlockError, type IoVector } from "@blockgraph/core";
import {
  decodeErrorPayload,
  decodeReply,
  encodeRequest,
  getU64,
  newReplyHeader,
  newRequestHeader,
  replyHeaderSize,
  viewOf,
} from "./codec.ts";
import { clientHandshake, type ExportInfo } from "./client_handshake.ts";
import {
  Cmd,
  REPLY_FLAG_DONE,
  REPLY_TYPE_ERROR_BIT,
  ReplyType,
  REQUEST_SIZE,
} from "./constants.ts";
import { fromNbdErrno } from "./errno.ts";
import { startTlsClient, type X509Creds } from "./tls.ts";
import { WireReader, WireWriter } from "./wire_io.ts";

/** A socket the client runs on. */
export interface ClientConn {
  /** Reads into `p`. */
  read(p: Uint8Array): Promise<number | null>;
  /** Writes from `p`. */
  write(p: Uint8Array): Promise<number>;
  /** Closes the socket. */
  close(): void;
}

/** How to reach the export. */
export interface NbdClientOptions {
  /** Opens a new socket to the server (a BlockError it throws is passed on as it is). */
  dial(): Promise<ClientConn>;
  /** The export name. */
  exportName: string;
  /** Seconds to keep reconnecting after the connection is lost (0: fail at once). */
  reconnectDelay: number;
  /** Names the server in messages (`nbd://127.0.0.1:10809/disk`). */
  describe: string;
  /**
   * TLS: client credentials, and the host name the server's certificate must carry (null:
   * the certificate must chain to the CA, its names are not checked).
   */
  tls?: { creds: X509Creds; hostname: string | null } | null;
  /** The metadata context block status reads (default `base:allocation`). */
  metaContext?: string;
}

/** One extent of `base:allocation` status. */
export interface StatusExtent {
  /** Its length in bytes. */
  length: number;
  /** NBD_STATE_HOLE and NBD_STATE_ZERO bits. */
  flags: number;
}

/** Operation names of commands, for error messages and contexts. */
const OP_NAMES: Record<number, string> = {
  [Cmd.READ]: "read",
  [Cmd.WRITE]: "write",
  [Cmd.FLUSH]: "flush",
  [Cmd.TRIM]: "discard",
  [Cmd.WRITE_ZEROES]: "write-zeroes",
  [Cmd.BLOCK_STATUS]: "block-status",
  [Cmd.CACHE]: "cache",
};

class Pending {
  type = 0;
  flags = 0;
  offset = 0;
  length = 0;
  qiov: IoVector | null = null;
  qiovOffset = 0;
  error: BlockError | null = null;
  extent: StatusExtent | null = null;
  resolve: () => void = () => {};
  reject: (e: BlockError) => void = () => {};
}

interface Session {
  conn: ClientConn;
  reader: WireReader;
  writer: WireWriter;
  lost: boolean;
}

/** A connection to one export, reconnecting as configured. */
export class NbdClient {
  /** What the handshake said about the export. */
  info: ExportInfo;
  readonly #options: NbdClientOptions;
  /** The context read as base:allocation is qemu:allocation-depth (fixed at open). */
  readonly #depthContext: boolean;
  #session: Session | null;
  readonly #inFlight = new Map<number, Pending>();
  #waiting: Pending[] = [];
  #nextCookie = 1;
  #reconnecting = false;
  /** Whether requests may wait for a reconnect (until one reconnect-delay ran out). */
  #mayWait = true;
  #closed = false;
  #timer: ReturnType<typeof setTimeout> | null = null;
  #wakeTimer: (() => void) | null = null;
  readonly #header = newRequestHeader();
  readonly #reply = newReplyHeader();

  private constructor(options: NbdClientOptions, info: ExportInfo, session: Session) {
    this.#options = options;
    this.#depthContext = options.metaContext === "qemu:allocation-depth";
    this.info = info;
    this.#session = session;
    void this.#receive(session);
  }

  /** Connects and runs the handshake; throws when the export cannot be had. */
  static async connect(options: NbdClientOptions): Promise<NbdClient> {
    const { session, info } = await NbdClient.#open(options);
    return new NbdClient(options, info, session);
  }

  static async #open(options: NbdClientOptions): Promise<{ session: Session; info: ExportInfo }> {
    let conn: ClientConn;
    try {
      conn = await options.dial();
    } catch (e) {
      if (e instanceof BlockError) throw e;
      const be = BlockError.from(e);
      throw new BlockError(be.code, `Failed to connect to '${options.describe}': ${be.message}`);
    }
    const reader = new WireReader(conn);
    const session: Session = { conn, reader, writer: null!, lost: false };
    session.writer = new WireWriter(conn, () => {});
    const tls = options.tls;
    const upgrade = tls && {
      upgrade: async () => {
        const t = await startTlsClient(session.conn, tls.creds, tls.hostname);
        session.conn = t;
        reader.setConn(t);
        session.writer.setConn(t);
      },
    };
    try {
      const info = await clientHandshake(
        reader,
        session.writer,
        options.exportName,
        upgrade,
        options.metaContext,
      );
      return { session, info };
    } catch (e) {
      try {
        session.conn.close();
      } catch {
        // The server hung up first.
      }
      if (e instanceof BlockError) throw e;
      throw new BlockError(
        "EIO",
        `NBD handshake with '${options.describe}' failed: ${(e as Error).message}`,
      );
    }
  }

  /** Sends a request; resolves when it is answered (with the extent for block status). */
  request(
    type: number,
    flags: number,
    offset: number,
    length: number,
    qiov: IoVector | null,
    qiovOffset: number,
  ): Promise<StatusExtent | null> {
    if (this.#closed) {
      return Promise.reject(
        new BlockError("EIO", `NBD client of '${this.#options.describe}' is closed`),
      );
    }
    const p = new Pending();
    p.type = type;
    p.flags = flags;
    p.offset = offset;
    p.length = length;
    p.qiov = qiov;
    p.qiovOffset = qiovOffset;
    return new Promise<StatusExtent | null>((resolve, reject) => {
      p.resolve = () => resolve(p.extent);
      p.reject = reject;
      const s = this.#session;
      if (s && !s.lost) this.#send(s, p);
      else {
        this.#waiting.push(p);
        if (!this.#reconnecting) void this.#reconnect();
      }
    });
  }

  #send(s: Session, p: Pending): void {
    const cookie = this.#nextCookie;
    this.#nextCookie = cookie >= 0xffffffff ? 1 : cookie + 1;
    this.#inFlight.set(cookie, p);
    const h = this.#header;
    h.flags = p.flags;
    h.type = p.type;
    h.cookieHi = 0;
    h.cookieLo = cookie;
    h.offset = p.offset;
    h.length = p.length;
    const w = s.writer;
    // claim() may move the writer to a fresh staging buffer: read `view` after it.
    const at = w.claim(REQUEST_SIZE);
    encodeRequest(w.view, at, h);
    if (p.type === Cmd.WRITE && p.length > 0) {
      const q = p.qiov!;
      const whole = q.contiguous(p.qiovOffset, p.length);
      // The caller keeps the buffer until the reply, which comes after the server read it all.
      if (whole) void w.send(whole);
      else for (const seg of q.slices(p.qiovOffset, p.length)) void w.send(seg);
    }
  }

  async #receive(s: Session): Promise<void> {
    try {
      for (;;) {
        const r = s.reader;
        if (r.available < 4 && !(await r.need(4))) break;
        const size = replyHeaderSize(r.view.getUint32(r.pos));
        if (size === 0) throw new Error("bad reply magic");
        if (r.available < size) await r.need(size);
        decodeReply(r.view, r.pos, this.#reply);
        r.consume(size);
        await this.#onReply(s);
      }
    } catch {
      // The connection failed or the server broke the protocol: treated alike below.
    }
    this.#lost(s);
  }

  async #onReply(s: Session): Promise<void> {
    const h = this.#reply;
    const r = s.reader;
    const cookie = h.cookieLo;
    const p = h.cookieHi === 0 ? this.#inFlight.get(cookie) : undefined;
    if (!p) throw new Error(`reply to unknown cookie ${cookie}`);
    if (!h.structured) {
      if (h.error !== 0) p.error = this.#error(h.error, "", p, p.offset);
      else if (p.type === Cmd.READ) await this.#readData(r, p, 0, p.length);
      this.#complete(cookie, p);
      return;
    }
    const type = h.type;
    if (type === ReplyType.OFFSET_DATA || type === ReplyType.OFFSET_HOLE) {
      if (p.type !== Cmd.READ || h.length < (type === ReplyType.OFFSET_DATA ? 9 : 12)) {
        throw new Error("unexpected content chunk");
      }
      await r.need(type === ReplyType.OFFSET_DATA ? 8 : 12);
      const off = getU64(r.view, r.pos);
      const n = type === ReplyType.OFFSET_DATA ? h.length - 8 : r.view.getUint32(r.pos + 8);
      r.consume(type === ReplyType.OFFSET_DATA ? 8 : 12);
      if (off < p.offset || off + n > p.offset + p.length) throw new Error("chunk out of range");
      if (type === ReplyType.OFFSET_DATA) await this.#readData(r, p, off - p.offset, n);
      else p.qiov!.fill(p.qiovOffset + off - p.offset, n, 0);
    } else if (type === ReplyType.BLOCK_STATUS) {
      const data = await r.readBytes(h.length);
      if (data.length < 12) throw new Error("short block status chunk");
      const v = viewOf(data);
      if (v.getUint32(0) === this.info.baseAllocationId && !p.extent) {
        let flags = v.getUint32(8);
        // qemu:allocation-depth read as base:allocation: depths past 2 count as 2 (QEMU's).
        if (this.#depthContext && flags > 2) flags = 2;
        p.extent = { length: v.getUint32(4), flags };
      }
    } else if (type & REPLY_TYPE_ERROR_BIT) {
      const e = decodeErrorPayload(await r.readBytes(h.length));
      if (!e) throw new Error("malformed error chunk");
      p.error ??= this.#error(e.error, e.message, p, e.offset ?? p.offset);
    } else if (type !== ReplyType.NONE) {
      throw new Error(`unknown chunk type ${type}`);
    } else if (h.length !== 0) {
      await r.skip(h.length);
    }
    if (h.flags & REPLY_FLAG_DONE) this.#complete(cookie, p);
  }

  async #readData(r: WireReader, p: Pending, at: number, n: number): Promise<void> {
    const q = p.qiov!;
    const dst = q.contiguous(p.qiovOffset + at, n);
    if (dst) {
      if (r.available >= n) {
        dst.set(r.buf.subarray(r.pos, r.pos + n));
        r.consume(n);
      } else {
        await r.readInto(dst);
      }
      return;
    }
    const tmp = await r.readBytes(n);
    q.copyFrom(p.qiovOffset + at, tmp, 0, n);
  }

  /** The error a reply reports, with the request's operation and the failing offset. */
  #error(errno: number, message: string, p: Pending, offset: number): BlockError {
    const code = fromNbdErrno(errno);
    const op = OP_NAMES[p.type] ?? `command ${p.type}`;
    const text = `NBD server '${this.#options.describe}' failed ${op} at offset ${offset}` +
      (message ? `: ${message}` : `: ${code}`);
    return new BlockError(code, text, { op, offset });
  }

  #complete(cookie: number, p: Pending): void {
    this.#inFlight.delete(cookie);
    if (p.error) p.reject(p.error);
    else if (p.type === Cmd.BLOCK_STATUS && !p.extent) {
      p.reject(new BlockError("EIO", "The NBD server sent no base:allocation status"));
    } else p.resolve();
  }

  #lost(s: Session): void {
    if (s.lost) return;
    s.lost = true;
    try {
      s.conn.close();
    } catch {
      // Already closed.
    }
    if (this.#session === s) this.#session = null;
    const again = [...this.#inFlight.entries()].sort((a, b) => a[0] - b[0]).map(([, p]) => p);
    this.#inFlight.clear();
    if (this.#closed) {
      this.#waiting = [...again, ...this.#waiting];
      this.#failWaiting("closed");
      return;
    }
    if (this.#options.reconnectDelay > 0 && this.#mayWait) {
      // Requests in flight are sent again on the next connection, in their original order.
      this.#waiting = [...again, ...this.#waiting];
    } else {
      // Without reconnect-delay (or once it ran out) they fail at once, as QEMU's.
      const text = `Connection to NBD server '${this.#options.describe}' lost`;
      for (const p of again) p.reject(new BlockError("EIO", text));
    }
    // An idle client reconnects when the next request comes, as QEMU's notices the loss then:
    // reconnect-delay counts from there.
    if (this.#waiting.length > 0 && !this.#reconnecting) void this.#reconnect();
  }

  /**
   * Reconnects, trying for reconnect-delay seconds while requests may wait (else once); fails
   * the waiting requests if it can't, and lets later requests try once each until a
   * connection is made again.
   */
  async #reconnect(): Promise<void> {
    this.#reconnecting = true;
    const delay = this.#mayWait ? this.#options.reconnectDelay : 0;
    const deadline = Date.now() + delay * 1000;
    let pause = 50;
    for (;;) {
      if (this.#closed) break;
      try {
        const { session, info } = await NbdClient.#open(this.#options);
        if (this.#closed) {
          session.conn.close();
          break;
        }
        if (info.size !== this.info.size) {
          session.conn.close();
          throw new BlockError("EIO", "The NBD export changed size across a reconnect");
        }
        this.info = info;
        this.#session = session;
        this.#reconnecting = false;
        this.#mayWait = true;
        void this.#receive(session);
        const waiting = this.#waiting;
        this.#waiting = [];
        for (const p of waiting) this.#send(session, p);
        return;
      } catch {
        // Up to the deadline, and once more at it.
        const left = deadline - Date.now();
        if (left <= 0) break;
        await new Promise<void>((r) => {
          this.#wakeTimer = r;
          this.#timer = setTimeout(r, Math.min(pause, left));
        });
        this.#timer = null;
        this.#wakeTimer = null;
        pause = Math.min(pause * 2, 1000);
      }
    }
    this.#reconnecting = false;
    this.#mayWait = false;
    this.#failWaiting(this.#closed ? "closed" : "lost");
  }

  #failWaiting(why: "closed" | "lost"): void {
    const waiting = this.#waiting;
    this.#waiting = [];
    const text = why === "closed"
      ? `NBD client of '${this.#options.describe}' is closed`
      : `Connection to NBD server '${this.#options.describe}' lost`;
    for (const p of waiting) p.reject(new BlockError("EIO", text));
  }

  /** Whether the client is connected now. */
  get connected(): boolean {
    return this.#session !== null && !this.#session.lost;
  }

  /** Sends NBD_CMD_DISC and closes the connection; waiting requests fail with EIO. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#timer !== null) clearTimeout(this.#timer);
    this.#wakeTimer?.();
    const s = this.#session;
    if (s && !s.lost) {
      const h = this.#header;
      h.flags = 0;
      h.type = Cmd.DISC;
      h.cookieHi = 0;
      h.cookieLo = 0;
      h.offset = 0;
      h.length = 0;
      const at = s.writer.claim(REQUEST_SIZE);
      encodeRequest(s.writer.view, at, h);
      await s.writer.idle();
      this.#lost(s);
    }
    this.#failWaiting("closed");
  }

  /** Drops the connection as if the network failed (for tests of reconnection). */
  breakConnection(): void {
    const s = this.#session;
    if (s) {
      try {
        s.conn.close();
      } catch {
        // Already closed.
      }
    }
  }
}
