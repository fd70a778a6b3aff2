/**
 * One client connection of the NBD server: the handshake, then the transmission phase.
 * Requests are read one after another and processed concurrently (up to
 * {@link MAX_REQUESTS} at once); their replies are queued on one writer, which sends the
 * replies that are ready together in one socket write.
 *
 * @module
 */

import { BlockError, BlockStatusFlags, ReqFlags } from "@blockgraph/core";
import {
  Cmd,
  CmdFlags,
  type ConnSocket,
  decodeRequest,
  NBD_MAX_BUFFER_SIZE,
  NbdErrno,
  REQUEST_SIZE,
  type RequestHeader,
  shutdownSocket,
  startTlsServer,
  type TlsConn,
  toNbdErrno,
  WireReader,
  WireWriter,
  type X509Creds,
} from "@blockgraph/drivers/nbd";
import type { ExportClient, NbdExport } from "./export.ts";
import { HEAD_ROOM, Slot, type SlotHandlers } from "./request_slot.ts";
import { type ExportLookup, type Negotiated, serverHandshake } from "./handshake.ts";
import { ALLOCATION_DEPTH_ID, type MetaContext } from "./meta_context.ts";
import { allocationFlags, bitmapExtents, collectExtents, statusAbove } from "./extents.ts";
import {
  type ContextExtents,
  dataHead,
  replyBlockStatus,
  replyError,
  replyHole,
  replyOk,
} from "./replies.ts";

const DATA_OR_ZERO = BlockStatusFlags.DATA | BlockStatusFlags.ZERO;

/** Requests one connection processes at once; further requests wait in the socket. */
export const MAX_REQUESTS = 64;
/**
 * Block status replies carry at most this many extents per context: QEMU's server's limit
 * (1 MiB of them). With 1024, `nbdinfo --map` of an image in 262144 extents took 256 round
 * trips and 264-418 ms against qemu-nbd's 100-128.
 */
const MAX_EXTENTS = 131072;
/**
 * Reads at least this long go out with `sendfile(2)` where the export allows it
 * ({@link ServerConnection.constructor}); smaller ones cost less read into the slot and sent
 * together with the replies around them.
 */
const HOST_READ_MIN = 64 * 1024;
/** Reads at least this long are sent sparse (holes as NBD_REPLY_TYPE_OFFSET_HOLE). */
const SPARSE_READ_MIN = 64 * 1024;
/**
 * How long a closing connection lets its last replies go out before it cuts the socket
 * ({@link ServerConnection.close}): a client that has stopped reading must not hold up
 * `block-export-del`, `nbd-server-stop` or the daemon's exit. QEMU cuts at once.
 */
export const CLOSE_GRACE_MS = 1000;
/** Pieces NBD_CMD_CACHE reads in. */
const CACHE_PIECE = 1024 * 1024;
/**
 * Sparse reads ask block status about this much (at least the read), so that one answer
 * covers the reads that follow in the same data run (see {@link DataRuns}).
 */
const STATUS_WINDOW = 64 * 1024 * 1024;

/** QEMU's names of the commands (nbd_cmd_lookup), for its error messages. */
const COMMAND_NAMES = [
  "read",
  "write",
  "disconnect",
  "flush",
  "trim",
  "cache",
  "write zeroes",
  "block status",
];

function cmdName(type: number): string {
  return COMMAND_NAMES[type] ?? "<unknown>";
}

/** An error the server answers a request with: an NBD error value and a message. */
class RequestError extends Error {
  readonly errno: number;
  constructor(errno: number, message: string) {
    super(message);
    this.errno = errno;
  }
}

/** `e` as the error a request is answered with. */
function requestError(e: unknown): RequestError {
  if (e instanceof RequestError) return e;
  const be = BlockError.from(e);
  return new RequestError(toNbdErrno(be.code), be.message);
}

/** The socket a connection runs on. */
export interface ServerConn {
  /** Reads into `p`. */
  read(p: Uint8Array): Promise<number | null>;
  /** Writes from `p`. */
  write(p: Uint8Array): Promise<number>;
  /** Closes the socket. */
  close(): void;
}

/** TLS for a server connection: credentials, and QEMU's `tls-authz` check. */
export interface ServerTls {
  /** The server's x509 credentials. */
  readonly creds: X509Creds;
  /** Called with a verified client's distinguished name; throwing refuses the client. */
  readonly authz: ((distinguishedName: string) => void) | null;
  /** Reports a refused client. */
  readonly log: ((message: string) => void) | null;
}

/** A client connection, from the greeting to the close. */
export class ServerConnection implements ExportClient {
  #conn: ServerConn;
  readonly #tls: ServerTls | null;
  /** The descriptor under the connection, for sendfile replies; -1 for none. */
  #sock: number;
  /** The socket is a unix socket: each reply is sent once complete (`WireWriter.flush`). */
  readonly #unix: boolean;
  readonly #reader: WireReader;
  readonly #writer: WireWriter;
  readonly #lookup: ExportLookup;
  #exp: NbdExport | null = null;
  #structured = false;
  #contexts: MetaContext[] = [];
  #closing = false;
  #socketClosed = false;
  #cutTimer: ReturnType<typeof setTimeout> | undefined;
  readonly #free: Slot[] = [];
  #inFlight = 0;
  #slotWaiter: (() => void) | null = null;
  #idleWaiter: (() => void) | null = null;
  readonly closed: Promise<void>;
  #resolveClosed!: () => void;
  readonly #handlers: SlotHandlers = {
    read: (slot) => this.#sendRead(slot),
    wrote: (slot) => {
      this.#replyOk(slot.header);
      this.#finish(slot);
    },
    failed: (slot, e) => {
      this.#replyError(slot.header, requestError(e));
      this.#finish(slot);
    },
    done: (slot) => this.#finish(slot),
  };

  /**
   * Wraps an accepted socket; {@link ServerConnection.run} serves it. With `tls` the client
   * must upgrade with NBD_OPT_STARTTLS before anything else. `sock` is the socket under
   * `conn` (`ListenerSockets` finds it): large reads of cached host files then go out with
   * `sendfile(2)`, and on a unix socket each small reply is sent as soon as it is complete
   * (`WireWriter.flush`). The connection closes `conn` only after its last use of `sock`.
   */
  constructor(
    conn: ServerConn,
    lookup: ExportLookup,
    tls: ServerTls | null = null,
    sock: ConnSocket | null = null,
  ) {
    this.#conn = conn;
    this.#tls = tls;
    this.#sock = tls || !sock ? -1 : sock.fd;
    this.#unix = sock?.unix ?? false;
    this.#lookup = lookup;
    this.#reader = new WireReader(conn);
    this.#writer = new WireWriter(conn, () => this.#closeSocket());
    this.closed = new Promise((r) => (this.#resolveClosed = r));
  }

  /** The export the client chose, once it chose one. */
  get export(): NbdExport | null {
    return this.#exp;
  }

  /** Serves the connection until the client leaves or the server ends it; never throws. */
  async run(): Promise<void> {
    try {
      const t = this.#tls;
      const tls = t && { upgrade: () => this.#startTls(t) };
      const n = await serverHandshake(this.#reader, this.#writer, this.#lookup, tls);
      if (n && !this.#closing) await this.#transmission(n);
    } catch {
      // A broken or vanished client ends only its own connection.
    }
    await this.#drain();
    await this.#writer.idle();
    this.#closeSocket();
    this.#exp?.removeClient(this);
    this.#resolveClosed();
  }

  async #startTls(tls: ServerTls): Promise<void> {
    if (this.#reader.available !== 0) throw new Error("Data arrived before the TLS upgrade");
    let t: TlsConn;
    try {
      t = await startTlsServer(this.#conn, tls.creds);
    } catch (e) {
      if (e instanceof BlockError && e.code === "EACCES") {
        tls.log?.(`option negotiation failed: ${e.message}`);
      }
      throw e;
    }
    // QEMU checks tls-authz on verified certificates only (verify-peer=on).
    if (tls.authz && tls.creds.verifyPeer) {
      try {
        tls.authz(t.peerDistinguishedName ?? "");
      } catch (e) {
        tls.log?.(`option negotiation failed: ${(e as Error).message}`);
        t.close();
        throw e;
      }
    }
    this.#conn = t;
    this.#sock = -1;
    this.#reader.setConn(t);
    this.#writer.setConn(t);
    if (this.#closing) this.#closeSocket();
  }

  /**
   * Ends the connection: no further requests are read, those in flight finish and are
   * answered, then the socket closes. Replies not sent within {@link CLOSE_GRACE_MS} (the
   * client stopped reading them) are dropped: the socket is cut, as QEMU cuts it at once.
   */
  close(): void {
    if (this.#closing) return;
    this.#closing = true;
    if (!this.#socketClosed) this.#cutTimer = setTimeout(() => this.#cut(), CLOSE_GRACE_MS);
    if (this.#inFlight === 0) {
      // Nothing to wait for: closing the socket wakes a read that is waiting.
      void this.#writer.idle().then(() => this.#closeSocket());
    } else {
      void this.#drain().then(() => this.#writer.idle()).then(() => this.#closeSocket());
    }
  }

  /**
   * Cuts the connection now: writes and sendfile replies waiting on the client fail, a read
   * sees the end, and the close goes on. A socket with a descriptor in use for sendfile is
   * shut down rather than closed, so the descriptor stays valid until its last use.
   */
  #cut(): void {
    this.#cutTimer = undefined;
    if (this.#socketClosed) return;
    if (this.#sock >= 0) shutdownSocket(this.#sock);
    else this.#closeSocket();
  }

  #closeSocket(): void {
    if (this.#socketClosed) return;
    this.#socketClosed = true;
    clearTimeout(this.#cutTimer);
    try {
      this.#conn.close();
    } catch {
      // Already closed by the peer.
    }
  }

  #drain(): Promise<void> {
    if (this.#inFlight === 0) return Promise.resolve();
    return new Promise((r) => (this.#idleWaiter = r));
  }

  async #transmission(n: Negotiated): Promise<void> {
    if (!n.exp.addClient(this)) return;
    this.#exp = n.exp;
    if (this.#sock >= 0) this.#writer.setSocket(this.#sock, this.#unix);
    this.#structured = n.structured;
    this.#contexts = n.contexts;
    const reader = this.#reader;
    for (;;) {
      if (this.#inFlight >= MAX_REQUESTS) {
        await new Promise<void>((r) => (this.#slotWaiter = r));
      }
      if (this.#closing) return;
      if (reader.available < REQUEST_SIZE && !(await reader.need(REQUEST_SIZE))) return;
      if (this.#closing) return;
      const slot = this.#free.pop() ?? new Slot(this.#handlers);
      const h = slot.header;
      // A bad magic means the stream is out of step: nothing after it can be trusted. The
      // client is told (EINVAL, to the cookie where one would be), then the connection ends,
      // as qemu-nbd does.
      if (!decodeRequest(reader.view, reader.pos, h)) {
        const v = reader.view;
        h.cookieHi = v.getUint32(reader.pos + 8);
        h.cookieLo = v.getUint32(reader.pos + 12);
        const magic = v.getUint32(reader.pos).toString(16);
        replyError(
          this.#writer,
          this.#structured,
          h,
          NbdErrno.EINVAL,
          `invalid magic (got 0x${magic})`,
        );
        return;
      }
      reader.consume(REQUEST_SIZE);
      if (h.type === Cmd.DISC) return;
      if (h.type === Cmd.WRITE) {
        // A payload this large cannot be skipped safely: the client is told why (as QEMU
        // does), then the connection ends.
        if (h.length > NBD_MAX_BUFFER_SIZE) {
          replyError(
            this.#writer,
            this.#structured,
            h,
            NbdErrno.EINVAL,
            `len (${h.length} ) is larger than max len (${NBD_MAX_BUFFER_SIZE})`,
          );
          return;
        }
        const q = slot.vector(h.length);
        if (reader.available >= h.length) {
          slot.buf.set(reader.buf.subarray(reader.pos, reader.pos + h.length), HEAD_ROOM);
          reader.consume(h.length);
        } else {
          await reader.readInto(q.iov[0]!);
        }
      }
      this.#inFlight++;
      if (!this.#start(slot)) void this.#handle(slot);
    }
  }

  /**
   * The fast path of the requests that make up nearly all traffic: a read answered in one
   * chunk and a write, each passing every check. The backend's promise is handed on with the
   * slot's own callbacks, with no async frame of its own. Returns false for anything else,
   * which {@link ServerConnection.#handle} serves (and, when a check fails, answers).
   */
  #start(slot: Slot): boolean {
    const h = slot.header;
    const exp = this.#exp!;
    const { type, flags, offset, length } = h;
    const size = exp.backend.getLength();
    if (offset > size || length > size - offset) return false;
    if (type === Cmd.READ) {
      const df = this.#structured ? CmdFlags.DF : 0;
      if (
        (flags & ~(CmdFlags.FUA | df)) !== 0 || length === 0 || length > NBD_MAX_BUFFER_SIZE ||
        (this.#structured && length >= SPARSE_READ_MIN && (flags & df) === 0) ||
        (length >= HOST_READ_MIN && this.#writer.sendsFiles)
      ) {
        return false;
      }
      exp.backend.preadv(offset, length, slot.vector(length), 0, 0).then(
        slot.onRead,
        slot.onFail,
      );
      return true;
    }
    if (type === Cmd.WRITE) {
      if ((flags & ~CmdFlags.FUA) !== 0 || !exp.writable) return false;
      const fua = flags & CmdFlags.FUA ? ReqFlags.FUA : 0;
      exp.backend.pwritev(offset, length, slot.qiov, 0, fua).then(slot.onWrote, slot.onFail);
      return true;
    }
    return false;
  }

  /** Sends the data a fast-path read put in `slot`, then frees the slot. */
  #sendRead(slot: Slot): void {
    const n = slot.header.length;
    const head = dataHead(slot, this.#structured, slot.header.offset, n, true);
    const sent = this.#writer.send(slot.message(head, n));
    if (sent) sent.then(slot.onSent);
    else this.#finish(slot);
  }

  async #handle(slot: Slot): Promise<void> {
    try {
      await this.#execute(slot);
    } catch (e) {
      this.#replyError(slot.header, requestError(e));
    }
    this.#finish(slot);
  }

  /**
   * Sends the request's reply on its way (`WireWriter.flush`), returns `slot` to the free list
   * and wakes whoever waits for a slot or for idle.
   */
  #finish(slot: Slot): void {
    this.#writer.flush();
    slot.trim();
    this.#free.push(slot);
    this.#inFlight--;
    const w = this.#slotWaiter;
    if (w) {
      this.#slotWaiter = null;
      w();
    }
    if (this.#inFlight === 0 && this.#idleWaiter) {
      const i = this.#idleWaiter;
      this.#idleWaiter = null;
      i();
    }
  }

  async #execute(slot: Slot): Promise<void> {
    const h = slot.header;
    const exp = this.#exp!;
    const backend = exp.backend;
    const { type, flags, offset, length } = h;
    // QEMU 7.2's checks in its order (nbd_co_receive_request, then nbd_handle_request) and
    // words; the errno is the one the protocol names (EPERM, ENOSPC), as later QEMU sends.
    if (type === Cmd.READ && length > NBD_MAX_BUFFER_SIZE) {
      throw new RequestError(
        NbdErrno.EINVAL,
        `len (${length} ) is larger than max len (${NBD_MAX_BUFFER_SIZE})`,
      );
    }
    const writes = type === Cmd.WRITE || type === Cmd.TRIM || type === Cmd.WRITE_ZEROES;
    if (writes && !exp.writable) throw new RequestError(NbdErrno.EPERM, "Export is read-only");
    if (type !== Cmd.FLUSH) {
      const size = backend.getLength();
      if (offset > size || length > size - offset) {
        const grow = type === Cmd.WRITE || type === Cmd.WRITE_ZEROES;
        throw new RequestError(
          grow ? NbdErrno.ENOSPC : NbdErrno.EINVAL,
          `operation past EOF; From: ${offset}, Len: ${length}, Size: ${size}`,
        );
      }
    }
    let valid = CmdFlags.FUA;
    if (type === Cmd.READ && this.#structured) valid |= CmdFlags.DF;
    if (type === Cmd.WRITE_ZEROES) valid |= CmdFlags.NO_HOLE | CmdFlags.FAST_ZERO;
    if (type === Cmd.BLOCK_STATUS) valid |= CmdFlags.REQ_ONE;
    if (flags & ~valid) {
      throw new RequestError(
        NbdErrno.EINVAL,
        `unsupported flags for command ${cmdName(type)} (got 0x${flags.toString(16)})`,
      );
    }
    if (type > Cmd.BLOCK_STATUS || type === Cmd.DISC) {
      throw new RequestError(NbdErrno.EINVAL, `invalid request type (${type}) received`);
    }
    const fua = flags & CmdFlags.FUA ? ReqFlags.FUA : 0;
    switch (type) {
      case Cmd.READ:
        return this.#read(slot, (flags & CmdFlags.DF) !== 0);
      case Cmd.WRITE:
        await backend.pwritev(offset, length, slot.qiov, 0, fua);
        return this.#replyOk(h);
      case Cmd.FLUSH:
        await backend.flush();
        return this.#replyOk(h);
      case Cmd.TRIM:
        exp.dataRuns.forget(offset, length);
        if (length > 0) await backend.pdiscard(offset, length);
        exp.dataRuns.forget(offset, length);
        if (fua) await backend.flush();
        return this.#replyOk(h);
      case Cmd.WRITE_ZEROES: {
        let zf = fua;
        if (!(flags & CmdFlags.NO_HOLE)) zf |= ReqFlags.MAY_UNMAP;
        if (flags & CmdFlags.FAST_ZERO) zf |= ReqFlags.NO_FALLBACK;
        exp.dataRuns.forget(offset, length);
        if (length > 0) await backend.pwriteZeroes(offset, length, zf);
        exp.dataRuns.forget(offset, length);
        return this.#replyOk(h);
      }
      case Cmd.CACHE:
        for (let done = 0; done < length;) {
          const n = Math.min(CACHE_PIECE, length - done);
          await backend.preadv(offset + done, n, slot.vector(n), 0, ReqFlags.PREFETCH);
          done += n;
        }
        return this.#replyOk(h);
      case Cmd.BLOCK_STATUS:
        return this.#blockStatus(h);
    }
  }

  async #read(slot: Slot, df: boolean): Promise<void> {
    const h = slot.header;
    const backend = this.#exp!.backend;
    const { offset, length } = h;
    if (!this.#structured) return this.#sendData(slot, offset, length, true);
    if (length === 0) return this.#replyOk(h);
    // Sparse reads: ranges that read as zeros go as holes, unless the client wants one chunk.
    // Small reads skip the status query: it costs more than the zeros it would save.
    const st = df || length < SPARSE_READ_MIN ? null : await this.#status(offset, length);
    if (st && st.pnum >= length) {
      if (allocationFlags(st.status) & 2) return replyHole(this.#writer, h, offset, length, true);
      return this.#sendData(slot, offset, length, true);
    }
    if (!st) return this.#sendData(slot, offset, length, true);
    const extents = await collectExtents(backend, false, offset, length, MAX_EXTENTS);
    let at = offset;
    const end = offset + length;
    for (let i = 0; i < extents.length && at < end; i++) {
      const e = extents[i]!;
      const n = Math.min(e.length, end - at);
      const last = at + n === end;
      if (e.flags & 2) replyHole(this.#writer, h, at, n, last);
      else await this.#sendData(slot, at, n, last);
      at += n;
    }
    if (at < end) await this.#sendData(slot, at, end - at, true);
  }

  /** Block status at `offset` for a sparse read of `length` bytes, through the data run. */
  async #status(offset: number, length: number): Promise<{ status: number; pnum: number }> {
    const exp = this.#exp!;
    if (exp.dataRuns.covers(offset, length)) return { status: BlockStatusFlags.DATA, pnum: length };
    const window = Math.max(length, Math.min(STATUS_WINDOW, exp.backend.getLength() - offset));
    const st = await statusAbove(exp.backend, offset, window);
    if ((st.status & DATA_OR_ZERO) === BlockStatusFlags.DATA) exp.dataRuns.note(offset, st.pnum);
    return st;
  }

  /**
   * Sends the reply of `n` bytes at `offset`: from the host file under the export where the
   * backend can serve it so (sendfile), else read into the slot and sent from there.
   */
  async #sendData(slot: Slot, offset: number, n: number, last: boolean): Promise<void> {
    const structured = this.#structured;
    if (n >= HOST_READ_MIN && this.#writer.sendsFiles) {
      slot.vector(0);
      const head = dataHead(slot, structured, offset, n, last);
      if (await this.#sendHost(slot, offset, n, head)) return;
    }
    if (n > 0) await this.#exp!.backend.preadv(offset, n, slot.vector(n), 0, 0);
    else slot.vector(0);
    // After vector(), which may have replaced the buffer.
    const head = dataHead(slot, structured, offset, n, last);
    await this.#writer.send(slot.message(head, n));
  }

  /**
   * Sends the reply header already in front of the slot's data (`head` bytes) and then the
   * `n` bytes at `offset` straight from the host file under the export, when the backend can
   * serve the read so (see `Backend.preadHost`). False, having sent nothing, when it cannot.
   */
  #sendHost(slot: Slot, offset: number, n: number, head: number): Promise<boolean> {
    slot.hostWriter = this.#writer;
    slot.hostHead = head;
    return this.#exp!.backend.preadHost(offset, n, slot.hostSink);
  }

  async #blockStatus(h: RequestHeader): Promise<void> {
    if (h.length === 0) throw new RequestError(NbdErrno.EINVAL, "need non-zero length");
    if (!this.#structured || this.#contexts.length === 0) {
      throw new RequestError(NbdErrno.EINVAL, "CMD_BLOCK_STATUS not negotiated");
    }
    const backend = this.#exp!.backend;
    const max = h.flags & CmdFlags.REQ_ONE ? 1 : MAX_EXTENTS;
    const replies: ContextExtents[] = [];
    for (const c of this.#contexts) {
      if (c.bitmap) {
        replies.push({ id: c.id, extents: bitmapExtents(c.bitmap, h.offset, h.length, max) });
        continue;
      }
      const depth = c.id === ALLOCATION_DEPTH_ID;
      replies.push({
        id: c.id,
        extents: await collectExtents(backend, depth, h.offset, h.length, max),
      });
    }
    replyBlockStatus(this.#writer, h, replies);
  }

  #replyOk(h: RequestHeader): void {
    replyOk(this.#writer, this.#structured, h);
  }

  #replyError(h: RequestHeader, err: RequestError): void {
    replyError(this.#writer, this.#structured, h, err.errno, err.message);
  }
}
