/**
 * The `native` I/O engine: Linux kernel AIO through libaio (`io_setup`, `io_submit`,
 * `io_getevents`), as QEMU's `aio=native`.
 *
 * One AIO context per process, shared by every file node that uses the engine and freed by
 * the last {@link IoEngine.release}. Requests take one of {@link AIO_SLOTS} preallocated slots
 * (an iocb and a native iovec array each; more requests wait for a free slot), and the
 * requests queued in one tick go to the kernel together at its end, a few per `io_submit`
 * (see `aio_slots.ts` for why not all in one). Completions are read straight from the
 * completion ring the kernel maps at the context's address: polled after each submission;
 * at shallow depths polled by spinning briefly once the microtask queue has drained (this
 * is what makes depth 1 fast); otherwise waited for with `io_getevents` on a pool thread, so
 * the event loop never blocks. Spinning stops whenever the loop's timers have been kept
 * waiting for more than about {@link AIO_MAX_BUSY_MS} milliseconds.
 *
 * Writes with FUA use `RWF_DSYNC` (Linux 4.13), flushes `IOCB_CMD_FDSYNC`/`FSYNC` (Linux
 * 4.18); older kernels get a write followed by a flush, and flushes on the helper thread of
 * `aio_worker.ts`, which also runs `fallocate(2)` (kernel AIO has no opcode for it).
 *
 * With O_DIRECT, caller segments that are not aligned are bounced through aligned memory.
 * Without it, kernel AIO reads and writes through the page cache inside `io_submit`, which is
 * why QEMU asks for `cache.direct=on` with `aio=native`.
 *
 * @module
 */

import { BlockError, errnoCode, type IoVector, strerror } from "@blockgraph/core";
import { type AioSlot, AioSlots, OP, type SlotOp } from "./aio_slots.ts";
import { type AioWorkerReply, type AioWorkerRequest, startAioWorker } from "./aio_worker.ts";
import { type AioSymbols, kernelAtLeast, libaio } from "./aio_ffi.ts";
import { type EngineOptions, type IoEngine, SYNC_FILE_RANGE_WRITE } from "./engine.ts";
import { type HostFiles, hostFiles } from "./posix_file.ts";
import { markTurn, nextTurn, sinceTurn, timersStarved } from "./loop_turn.ts";

/** How many requests the engine keeps in the kernel at most (the AIO context's size). */
export const AIO_SLOTS = 256;
/** The longest stretch, in milliseconds, polling may keep the event loop from its other work. */
export const AIO_MAX_BUSY_MS = 3;
/** How long one poll of the completion ring may spin, in milliseconds. */
const SPIN_MS = 0.1;
/** A hint's outcome, which nobody waits on. */
const ignore = (): void => {};
/** Microtask turns to let pass before spinning, so promise chains submit their next request. */
const IDLE_TURNS = 16;
/**
 * Spin only with this many requests in the kernel or fewer. At higher depths a virtio disk
 * completes requests in bursts with long gaps between them (spins there almost never found a
 * completion), and waiting on a pool thread costs less CPU for the same throughput.
 */
const SPIN_DEPTH = 4;

/** The process-wide context, while some engine uses it. */
let shared: AioContext | null = null;

/**
 * Creates a handle on the process's `native` engine, setting up the kernel AIO context when
 * it is the first. Throws a BlockError when the engine cannot start: ENOTSUP when libaio is
 * missing ("libaio.so.1 not found (install libaio1)"), or the errno of `io_setup`.
 *
 * @example
 * ```ts
 * import { IoVector } from "@blockgraph/core";
 * import { createAioEngine } from "./aio.ts";
 * const path = await Deno.makeTempFile();
 * await Deno.writeFile(path, new Uint8Array(4096).fill(7));
 * const engine = createAioEngine({ direct: false });
 * const files = await engine.files();
 * const fd = files.open(path, { write: false });
 * const buf = new Uint8Array(4096);
 * console.assert(await engine.preadv(fd, 0, IoVector.of(buf), 0, 4096) === 4096);
 * console.assert(buf[4095] === 7);
 * await engine.drainFd(fd);
 * files.close(fd);
 * await engine.release();
 * await Deno.remove(path);
 * ```
 */
export function createAioEngine(options: EngineOptions): IoEngine {
  const core = shared ??= new AioContext();
  core.refs++;
  return new AioEngine(core, options.direct);
}

/** One user's handle on the shared context. */
class AioEngine implements IoEngine {
  readonly name = "native" as const;
  #core: AioContext | null;
  readonly #direct: boolean;

  constructor(core: AioContext, direct: boolean) {
    this.#core = core;
    this.#direct = direct;
  }

  #released(): Promise<never> {
    return Promise.reject(new BlockError("ESHUTDOWN", "The native I/O engine was released"));
  }

  preadv(fd: number, offset: number, qiov: IoVector, qiovOffset: number, bytes: number) {
    const c = this.#core;
    if (!c) return this.#released();
    return c.rw(OP.READ, fd, offset, qiov, qiovOffset, bytes, false, this.#direct);
  }

  pwritev(
    fd: number,
    offset: number,
    qiov: IoVector,
    qiovOffset: number,
    bytes: number,
    fua: boolean,
  ): Promise<number> {
    const c = this.#core;
    if (!c) return this.#released();
    if (!fua || c.rwfDsync) {
      return c.rw(OP.WRITE, fd, offset, qiov, qiovOffset, bytes, fua, this.#direct);
    }
    return c.rw(OP.WRITE, fd, offset, qiov, qiovOffset, bytes, false, this.#direct)
      .then((n) => c.sync(fd, true).then(() => n));
  }

  fsync(fd: number, datasync: boolean): Promise<void> {
    const c = this.#core;
    return c ? c.sync(fd, datasync) : this.#released();
  }

  fallocate(fd: number, mode: number, offset: number, length: number): Promise<void> {
    const c = this.#core;
    return c ? c.fallocate(fd, mode, offset, length) : this.#released();
  }

  startWriteback(fd: number, offset: number, length: number): Promise<void> {
    const c = this.#core;
    return c ? c.startWriteback(fd, offset, length) : Promise.resolve();
  }

  drainFd(fd: number): Promise<void> {
    const c = this.#core;
    return c ? c.drain(fd) : Promise.resolve();
  }

  release(): Promise<void> {
    const c = this.#core;
    this.#core = null;
    return c ? c.release() : Promise.resolve();
  }

  /** Any descriptor: the C library's calls where they load, else `node:fs`'s. */
  files(): Promise<HostFiles> {
    return hostFiles();
  }
}

/** A request waiting for a free slot. */
interface Waiting {
  op: SlotOp;
  fd: number;
  offset: number;
  qiov: IoVector | null;
  qiovOffset: number;
  bytes: number;
  flag: boolean;
  direct: boolean;
  resolve: (n: number) => void;
  reject: (e: BlockError) => void;
}

/** The shared state: the kernel context, the slots, the reaping policy, the helper thread. */
class AioContext {
  /** Handles using the context. */
  refs = 0;
  /** Whether writes can carry RWF_DSYNC (Linux 4.13). */
  readonly rwfDsync = kernelAtLeast(4, 13);
  readonly #aioFsync = kernelAtLeast(4, 18);
  readonly #lib: AioSymbols;
  readonly #slots: AioSlots;
  readonly #backlog: Waiting[] = [];
  #closing = false;
  #flushScheduled = false;
  #reapScheduled = false;
  #turns = 0;
  #progress: { promise: Promise<void>; resolve: () => void } | null = null;
  #worker: Worker | null = null;
  #jobs = new Map<number, { fd: number; done: (result: number) => void }>();
  #nextJob = 1;

  constructor() {
    this.#lib = libaio();
    this.#slots = new AioSlots(this.#lib, AIO_SLOTS, (slot, res) => this.#finish(slot, res));
  }

  readonly #flush = (): void => {
    this.#flushScheduled = false;
    const s = this.#slots;
    s.submit();
    if (s.waiting) return;
    // Past the busy budget, completions are collected after a turn of the loop (#runReap).
    if (this.#maySpin()) this.#reapNow();
    else if (s.inflight > 0) this.#scheduleReap();
  };

  #scheduleFlush(): void {
    if (this.#flushScheduled) return;
    this.#flushScheduled = true;
    queueMicrotask(this.#flush);
  }

  /** Queues a read or write; resolves with the byte count. */
  rw(
    op: SlotOp,
    fd: number,
    offset: number,
    qiov: IoVector,
    qiovOffset: number,
    bytes: number,
    fua: boolean,
    direct: boolean,
  ): Promise<number> {
    return new Promise((resolve, reject) => {
      this.#start(op, fd, offset, qiov, qiovOffset, bytes, fua, direct, resolve, reject);
    });
  }

  /** fdatasync (or fsync): an AIO request where the kernel has it, else the helper thread. */
  sync(fd: number, datasync: boolean): Promise<void> {
    if (!this.#aioFsync) {
      return this.#job({
        call: datasync ? "fdatasync" : "fsync",
        fd,
        mode: 0,
        offset: 0,
        length: 0,
      })
        .then((r) => {
          if (r < 0) throw this.#error(OP.SYNC, -r, -1);
        });
    }
    return new Promise<number>((resolve, reject) => {
      this.#start(OP.SYNC, fd, 0, null, 0, 0, datasync, false, resolve, reject);
    }).then(() => {});
  }

  /** sync_file_range(2) with SYNC_FILE_RANGE_WRITE on the helper thread; never rejects. */
  startWriteback(fd: number, offset: number, length: number): Promise<void> {
    return this.#job({ call: "sync_file_range", fd, mode: SYNC_FILE_RANGE_WRITE, offset, length })
      .then(ignore, ignore);
  }

  /** fallocate(2) on the helper thread. */
  async fallocate(fd: number, mode: number, offset: number, length: number): Promise<void> {
    const r = await this.#job({ call: "fallocate", fd, mode, offset, length });
    if (r < 0) throw this.#error(OP.FALLOCATE, -r, offset);
  }

  #start(
    op: SlotOp,
    fd: number,
    offset: number,
    qiov: IoVector | null,
    qiovOffset: number,
    bytes: number,
    flag: boolean,
    direct: boolean,
    resolve: (n: number) => void,
    reject: (e: BlockError) => void,
  ): void {
    if (this.#closing) {
      reject(new BlockError("ESHUTDOWN", "The native I/O engine was released"));
      return;
    }
    const slot = this.#slots.take();
    if (!slot) {
      this.#backlog.push({
        op,
        fd,
        offset,
        qiov,
        qiovOffset,
        bytes,
        flag,
        direct,
        resolve,
        reject,
      });
      return;
    }
    slot.resolve = resolve;
    slot.reject = reject;
    const errno = this.#slots.prepare(slot, op, fd, offset, qiov, qiovOffset, bytes, flag, direct);
    if (errno !== 0) {
      this.#finish(slot, -errno);
      return;
    }
    this.#scheduleFlush();
  }

  /**
   * Settles the request in `slot` with the kernel's result (bounced data already copied
   * back) and gives the slot to the next request waiting for one.
   */
  #finish(slot: AioSlot, res: number): void {
    const { op, offset, resolve, reject } = slot;
    this.#slots.give(slot);
    const next = this.#backlog.shift();
    if (next) {
      this.#start(
        next.op,
        next.fd,
        next.offset,
        next.qiov,
        next.qiovOffset,
        next.bytes,
        next.flag,
        next.direct,
        next.resolve,
        next.reject,
      );
    }
    if (res >= 0) resolve!(res);
    else reject!(this.#error(op, -res, offset));
  }

  #error(op: SlotOp, errno: number, offset: number): BlockError {
    const code = errnoCode(errno);
    const what = op === OP.READ
      ? "read"
      : op === OP.WRITE
      ? "write"
      : op === OP.SYNC
      ? "flush"
      : "fallocate";
    const at = offset >= 0 ? ` at offset ${offset}` : "";
    return new BlockError(
      code,
      `Could not ${what}${at}: ${strerror(code)}`,
      offset >= 0 ? { op: what, offset } : { op: what },
    );
  }

  /** Reaps what the ring holds, and arranges for the rest to be reaped. */
  #reapNow(): void {
    const s = this.#slots;
    if (s.reap() > 0) this.#progressed();
    if (s.inflight > 0) this.#scheduleReap();
  }

  #scheduleReap(): void {
    if (this.#reapScheduled || this.#slots.waiting) return;
    this.#reapScheduled = true;
    this.#turns = 0;
    queueMicrotask(this.#runReap);
  }

  readonly #runReap = (): void => {
    this.#reapScheduled = false;
    const s = this.#slots;
    if (s.waiting || s.destroyed || s.inflight === 0) return;
    if (!this.#maySpin()) {
      // Completions that are there at once (page-cache I/O is done inside io_submit) would
      // keep this chain in microtasks for ever: collect them after a turn of the loop, by a
      // wait on the pool thread or, once timers are starved, a zero timeout.
      if (timersStarved()) {
        this.#reapScheduled = true;
        nextTurn().then(this.#runReap);
      } else {
        s.wait(this.#onWait);
      }
      return;
    }
    if (s.reap() > 0) {
      this.#progressed();
      if (s.inflight > 0) this.#scheduleReap();
      return;
    }
    if (this.#turns < IDLE_TURNS) {
      // Let the promise chains that are under way take another step first.
      this.#turns++;
      this.#reapScheduled = true;
      queueMicrotask(this.#runReap);
      return;
    }
    if (s.userRing && s.inflight <= SPIN_DEPTH && this.#maySpin() && s.spin(SPIN_MS)) {
      if (s.reap() > 0) this.#progressed();
      if (s.inflight > 0) this.#scheduleReap();
      return;
    }
    s.wait(this.#onWait);
  };

  readonly #onWait = (n: number): void => {
    markTurn();
    if (n > 0) this.#progressed();
    const s = this.#slots;
    if (!s.destroyed && s.inflight > 0) this.#scheduleReap();
  };

  /**
   * Whether polling may go on keeping the loop busy: not once the event loop has gone
   * AIO_MAX_BUSY_MS without turning (the clock `loop_turn.ts` keeps for every engine); then the
   * engine waits on the pool thread instead of spinning until it has turned.
   */
  #maySpin(): boolean {
    return sinceTurn() < AIO_MAX_BUSY_MS;
  }

  /** Something completed: wake drains, and submit what a full ring held back. */
  #progressed(): void {
    const p = this.#progress;
    if (p) {
      this.#progress = null;
      p.resolve();
    }
    if (this.#slots.queued > 0) this.#scheduleFlush();
  }

  #nextProgress(): Promise<void> {
    if (!this.#progress) {
      let resolve!: () => void;
      const promise = new Promise<void>((r) => resolve = r);
      this.#progress = { promise, resolve };
    }
    return this.#progress.promise;
  }

  #job(req: Omit<AioWorkerRequest, "id">): Promise<number> {
    if (this.#closing) {
      return Promise.reject(new BlockError("ESHUTDOWN", "The native I/O engine was released"));
    }
    const worker = this.#worker ??= this.#startWorker();
    const id = this.#nextJob++;
    return new Promise((done) => {
      this.#jobs.set(id, { fd: req.fd, done });
      worker.postMessage({ id, ...req } satisfies AioWorkerRequest);
    });
  }

  #startWorker(): Worker {
    const w = startAioWorker();
    w.onmessage = (e: MessageEvent<AioWorkerReply>) => {
      const job = this.#jobs.get(e.data.id);
      if (!job) return;
      this.#jobs.delete(e.data.id);
      job.done(e.data.result);
      this.#progressed();
    };
    w.onerror = (e: ErrorEvent) => {
      // The thread could not start (no FFI permission in it, for example): fail its work.
      e.preventDefault();
      for (const job of this.#jobs.values()) job.done(-5);
      this.#jobs.clear();
      this.#worker = null;
      w.terminate();
      this.#progressed();
    };
    return w;
  }

  #busy(fd: number | null): boolean {
    if (this.#slots.busy(fd)) return true;
    for (const job of this.#jobs.values()) if (fd === null || job.fd === fd) return true;
    return false;
  }

  /**
   * Completes or cancels everything on `fd` (everything, for `null`): requests still waiting
   * for a slot are cancelled, those in the kernel are offered to io_cancel and then awaited.
   */
  async drain(fd: number | null): Promise<void> {
    const backlog = this.#backlog;
    for (let i = 0; i < backlog.length;) {
      const w = backlog[i]!;
      if (fd !== null && w.fd !== fd) {
        i++;
        continue;
      }
      backlog.splice(i, 1);
      w.reject(new BlockError("ECANCELED", "Request cancelled: its file is being closed"));
    }
    if (this.#slots.queued > 0) this.#flush();
    this.#slots.cancel(fd);
    while (this.#busy(fd)) await this.#nextProgress();
  }

  /** Drops one user; the last one drains everything and destroys the context. */
  async release(): Promise<void> {
    if (--this.refs > 0) return;
    if (shared === this) shared = null;
    this.#closing = true;
    await this.drain(null);
    this.#worker?.terminate();
    this.#worker = null;
    await this.#slots.destroy();
  }
}
