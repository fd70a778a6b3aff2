/**
 * The io_uring engine, driven from TypeScript: one ring per process shared by every file
 * node (created at the first acquire, freed at the last release), SQEs written straight into
 * the mapped ring, every request queued in one tick submitted with one `io_uring_enter`.
 *
 * Completions are reaped without blocking the event loop: when few requests are in flight
 * the engine spins briefly on the CQ tail (a nonblocking wait costs tens of microseconds per
 * wake-up, a large share of one request at depth 1); deeper, the JS thread sleeps in
 * `io_uring_enter(GETEVENTS)` with a short timeout; when that times out (a slow device), or
 * when the event loop has been kept from running for too long, the wait goes to a pool
 * thread. The ring uses set-up flags 0, so that thread may wait while the JS thread submits.
 *
 * The hot path allocates only the request's promise: preallocated slots, one reused native
 * iovec array per slot, addresses as numbers, 64-bit fields written as 32-bit halves.
 *
 * @module
 */

import { BlockError, errnoCode, type IoVector, strerror } from "@blockgraph/core";
import { BufferPool } from "./buffer_pool.ts";
import type { EngineOptions, IoEngine } from "./engine.ts";
import { IOVEC_SIZE, NativeIovec } from "./iovec.ts";
import { lastErrno, libc } from "./libc.ts";
import { markTurn, sinceTurn } from "./loop_turn.ts";
import {
  ENTER_GETEVENTS,
  FSYNC_DATASYNC,
  IOSQE_ASYNC,
  OP,
  Ring,
  RingSetupError,
  RWF_DSYNC,
} from "./uring_ring.ts";

/** SQ entries (the kernel makes the CQ twice as large) and request slots. */
const ENTRIES = 256;
/** iovecs per slot; requests with more segments are bounced whole. */
const IOV_PER_SLOT = 64;
/** `user_data` high word of requests that have no slot (cancel, wake-up NOP). */
const INTERNAL = 1;
/**
 * Spin on the CQ only while at most this many requests are in flight. At depth 1 spinning is
 * a trade: 4 KiB O_DIRECT random reads beside fio, medians of 5: spinning 1.05–1.21x fio's
 * IOPS at 1.7–2.0x its CPU per request; waiting in the kernel instead (timed wait, no spin)
 * 0.85x at 1.49x; hybrid polling (sleeping 50% or 70% of the usual wait, then spinning)
 * 0.67x / 0.87x at 2.0x / 1.75x, as a timer wake-up costs more than the spin it saves.
 */
const SPIN_DEPTH = 2;
/** How long one spin may last (ms) before falling back to a nonblocking wait. */
const SPIN_MS = 0.25;
/** The longest the engine keeps the event loop from running by spinning (ms). */
const YIELD_MS = 2;

/**
 * Deeper than SPIN_DEPTH, the JS thread waits in the kernel for the next completion for at
 * most this long (µs; io_uring_enter with a timeout) before handing the wait to a pool thread:
 * it sleeps rather than spins, and wakes without a cross-thread hand-off (about 15 µs each
 * way here). 4 KiB random reads at depth 32, O_DIRECT, medians of 5 alternating rounds beside
 * fio: pool-thread waits 0.79–0.94x fio at 1.40–1.46x its CPU per request; 1000 µs waits
 * 0.87–1.06x at 1.15–1.21x; 200–500 µs in between. A wait that times out means a slow device:
 * then the pool thread waits for TIMED_COOL_MS (qcow2 4 KiB random reads at depth 32: a
 * 100 ms cool-down cost 5–10% of IOPS, as latency spikes of a virtual disk trip it). The
 * chain budget (YIELD_MS) still bounds how long the event loop is kept.
 */
const TIMED_WAIT_US = 1000;
/**
 * A timed wait returns once this share of the requests in flight has completed (at least
 * one), so each wake-up reaps a batch: 4 KiB O_DIRECT at depth 32, medians of 5 beside fio,
 * reads 0.905x -> 0.921x fio at 1.24x -> 1.17x its CPU, writes 0.92x -> 0.96x at 1.16x ->
 * 1.14x (one completion, against a quarter); an eighth did no better than one.
 */
const TIMED_MIN_FRACTION = 0.25;
/** How long (ms) after a timed wait expired the engine waits on the pool thread only. */
const TIMED_COOL_MS = 10;

/**
 * Submit as soon as this many SQEs are queued rather than once per microtask round: the
 * device queue stays staggered (4 KiB random reads at depth 32, medians of 5 alternating
 * rounds against fio: one enter per round 0.76x fio, per 4 SQEs 0.92x, per 2 SQEs 0.96x).
 */
const SUBMIT_BATCH = 2;
/**
 * Page-cache requests of at least this many bytes go to io-wq workers (IOSQE_ASYNC) rather
 * than being copied inline on the JS thread inside `io_uring_enter`, and the engine does not
 * spin while any is in flight (a worker's copy of one takes far longer than a spin lasts).
 * `img convert` 1 GiB half-allocated, page cache, 8 x 1 MiB in flight, medians of 9
 * alternating runs against qemu-img convert: qcow2->raw 245 -> 212 ms (0.69x -> 0.80x),
 * raw->qcow2 247 -> 220 ms (0.69x -> 0.77x); 256 KiB did no better than 64 KiB. Since the
 * I/O buffers moved to huge pages, that holds for writes only: large page-cache reads are
 * left inline (a miss still goes to io-wq, the kernel's NOWAIT attempt failing). nbdcopy of
 * a 1 GiB export, medians of 5, twice each: unix 0.70x -> 0.80-0.84x qemu-nbd at 1.7x ->
 * 1.3x its CPU, TCP 0.83-0.85x -> 0.77-0.79x nbdkit at 1.5x -> 1.25-1.3x; convert unchanged.
 */
const ASYNC_BYTES = 64 * 1024;
/** Page-cache writes done on the JS thread may keep the event loop for this long (ms). */
const SYNC_BUDGET_MS = 1;
/** A page-cache write slower than this (ms) means writeback pressure... */
const SYNC_SLOW_MS = 1;
/** ...and sends page-cache writes through the ring for this long (ms). */
const SYNC_COOL_MS = 100;

/**
 * Tuning switches, for side-by-side benchmarks of the engine's policies; not an API. A daemon
 * run as a child process takes them as JSON in `BLOCKGRAPH_URING_TUNING`.
 * - `spinDepth`/`spinMs`: spin on the CQ while at most this many are in flight, for at most
 *   this long;
 * - `timedWaitUs`: the longest wait in the kernel on the JS thread (0: none); `timedCoolMs`:
 *   how long an expired one sends waits to the pool thread; `timedMinFrac`: the share of
 *   requests in flight a timed wait waits for; `timedTurnMs`: timed waits only this long after
 *   the event loop last turned (NBD 4k randwrite at depth 32 against qemu-nbd and nbdkit, 5
 *   rounds: 2 ms, 0.3 ms and 0.1 ms all gave 0.85–0.88x, while O_DIRECT randwrite fell from
 *   0.92x to 0.79x);
 * - `syncWrites`: page-cache writes with pwritev on the JS thread;
 * - `submitBatch`: SQEs queued before an early submit (0: once per microtask round);
 * - `asyncBytes`: the size from which page-cache requests are marked large (0: none);
 *   `asyncOn`: large writes get IOSQE_ASYNC; `asyncReads`: large reads too; `spinBig`: spin
 *   even while large ones are in flight; `earlyBig`: submit large ones early.
 */
export const uringTuning = {
  spinDepth: SPIN_DEPTH,
  spinMs: SPIN_MS,
  timedWaitUs: TIMED_WAIT_US,
  timedCoolMs: TIMED_COOL_MS,
  timedMinFrac: TIMED_MIN_FRACTION,
  timedTurnMs: YIELD_MS,
  syncWrites: false,
  submitBatch: SUBMIT_BATCH,
  asyncBytes: ASYNC_BYTES,
  spinBig: false,
  earlyBig: false,
  asyncOn: true,
  asyncReads: false,
};

// Benchmarks of a daemon in a child process set the switches through the environment.
try {
  const env = Deno.env.get("BLOCKGRAPH_URING_TUNING");
  if (env) Object.assign(uringTuning, JSON.parse(env));
} catch { /* no env permission, or not JSON: the defaults stay */ }

const EINTR = 4;
const EAGAIN = 11;
const EBUSY = 16;
const ETIME = 62;

const OP_NAMES: Record<number, string> = {
  [OP.READV]: "read",
  [OP.WRITEV]: "write",
  [OP.FSYNC]: "flush",
  [OP.FALLOCATE]: "fallocate",
};

/** A request slot: the state of one request between submission and completion. */
class Slot {
  readonly index: number;
  readonly iov: NativeIovec;
  fd = -1;
  op = 0;
  offset = 0;
  qiov: IoVector | null = null;
  qiovOffset = 0;
  cancelled = false;
  big = false;
  resolve: ((n: number) => void) | null = null;
  reject: ((e: unknown) => void) | null = null;

  constructor(index: number, iov: NativeIovec) {
    this.index = index;
    this.iov = iov;
  }
}

let executorSlot: Slot | null = null;
/** One executor for every request promise: no closure is made per request. */
function executor(resolve: (n: number) => void, reject: (e: unknown) => void): void {
  executorSlot!.resolve = resolve;
  executorSlot!.reject = reject;
}

interface SlotWaiter {
  fd: number;
  resolve: () => void;
  reject: (e: unknown) => void;
}

/** The process's ring and its request slots. Use {@link createUringEngine}. */
class UringEngine {
  readonly #ring: Ring;
  readonly #pool = new BufferPool();
  readonly #slots: Slot[] = [];
  readonly #free: Slot[] = [];
  #slotWaiters: SlotWaiter[] = [];
  #drains: { fd: number; resolve: () => void }[] = [];
  #idleWaiters: (() => void)[] = [];
  #queued = 0;
  #inflight = 0;
  #bigInflight = 0;
  #cqHead: number;
  #kickScheduled = false;
  #waiting: Promise<void> | null = null;
  #broken: BlockError | null = null;
  #syncOffUntil = 0;
  #timedOffUntil = 0;
  readonly #kick = (): void => {
    this.#kickScheduled = false;
    this.#run();
  };
  readonly #onWait = (rc: number): void => {
    this.#waiting = null;
    markTurn();
    if (rc < 0) {
      // errno stayed on the pool thread: ask again without waiting, here, to learn it.
      const r = this.#ring.enter(0, 0, ENTER_GETEVENTS);
      if (r < 0 && r !== -EINTR && r !== -EAGAIN && r !== -EBUSY) {
        this.#fail(-r, "io_uring_enter");
        return;
      }
    }
    this.#run();
  };

  constructor() {
    this.#ring = new Ring(ENTRIES, [
      OP.NOP,
      OP.READV,
      OP.WRITEV,
      OP.FSYNC,
      OP.ASYNC_CANCEL,
      OP.FALLOCATE,
    ]);
    const n = Math.min(this.#ring.sqEntries, this.#ring.cqEntries >> 1);
    const iovMem = this.#pool.get(n * IOV_PER_SLOT * IOVEC_SIZE);
    for (let i = 0; i < n; i++) {
      const at = i * IOV_PER_SLOT * IOVEC_SIZE;
      const bytes = iovMem.bytes.subarray(at, at + IOV_PER_SLOT * IOVEC_SIZE);
      const slot = new Slot(i, new NativeIovec(bytes, iovMem.addr + at, IOV_PER_SLOT));
      this.#slots.push(slot);
    }
    for (let i = n - 1; i >= 0; i--) this.#free.push(this.#slots[i]!);
    this.#cqHead = Atomics.load(this.#ring.cq, this.#ring.cqHead);
  }

  /** Queues a vectored read or write; resolves with the bytes transferred. */
  rw(
    op: number,
    fd: number,
    offset: number,
    qiov: IoVector,
    qiovOffset: number,
    bytes: number,
    rwFlags: number,
    direct: boolean,
  ): Promise<number> {
    if (this.#broken) return Promise.reject(this.#broken);
    const slot = this.#free.pop();
    if (slot === undefined) {
      return this.#slotFreed(fd).then(() =>
        this.rw(op, fd, offset, qiov, qiovOffset, bytes, rwFlags, direct)
      );
    }
    let count: number;
    try {
      count = slot.iov.fill(qiov, qiovOffset, bytes, direct, op === OP.WRITEV, this.#pool);
    } catch (e) {
      slot.iov.release(this.#pool);
      this.#free.push(slot);
      return Promise.reject(BlockError.from(e, { offset, op: OP_NAMES[op] ?? "io" }));
    }
    if (
      op === OP.WRITEV && !direct && rwFlags === 0 && uringTuning.syncWrites && this.#syncAllowed()
    ) {
      return this.#syncWrite(slot, fd, offset, count);
    }
    slot.qiov = qiov;
    slot.qiovOffset = qiovOffset;
    const t = uringTuning;
    if (!direct && t.asyncBytes > 0 && bytes >= t.asyncBytes) {
      slot.big = true;
      this.#bigInflight++;
      return this.#start(
        slot,
        op,
        fd,
        offset,
        slot.iov.addr,
        count,
        rwFlags,
        t.earlyBig,
        t.asyncOn && (op === OP.WRITEV || t.asyncReads) ? IOSQE_ASYNC : 0,
      );
    }
    return this.#start(slot, op, fd, offset, slot.iov.addr, count, rwFlags, direct);
  }

  /** Queues a request without data (fsync, fallocate); resolves with the kernel's result. */
  simple(
    op: number,
    fd: number,
    offset: number,
    addr: number,
    len: number,
    flags: number,
  ): Promise<number> {
    if (this.#broken) return Promise.reject(this.#broken);
    const slot = this.#free.pop();
    if (slot === undefined) {
      return this.#slotFreed(fd).then(() => this.simple(op, fd, offset, addr, len, flags));
    }
    return this.#start(slot, op, fd, offset, addr, len, flags, false);
  }

  #start(
    slot: Slot,
    op: number,
    fd: number,
    offset: number,
    addr: number,
    len: number,
    flags: number,
    early: boolean,
    sqeFlags = 0,
  ): Promise<number> {
    slot.fd = fd;
    slot.op = op;
    slot.offset = offset;
    slot.cancelled = false;
    if (this.#ring.sqSpace === 0) this.#submit();
    this.#ring.prep(op, fd, offset, addr, len, flags, slot.index, 0, sqeFlags);
    this.#queued++;
    this.#inflight++;
    // Device requests go out early; page-cache ones complete inline, cheaper in one batch.
    const batch = uringTuning.submitBatch;
    if (early && batch > 0 && this.#queued >= batch) this.#submit();
    executorSlot = slot;
    const p = new Promise<number>(executor);
    executorSlot = null;
    if (!this.#kickScheduled) {
      this.#kickScheduled = true;
      queueMicrotask(this.#kick);
    }
    return p;
  }

  #syncAllowed(): boolean {
    const now = performance.now();
    if (now < this.#syncOffUntil) return false;
    return sinceTurn(now) < SYNC_BUDGET_MS;
  }

  /**
   * A page-cache write done here with pwritev: io_uring hands buffered writes that cannot be
   * done without blocking (ext4, for one) to its io-wq workers, which costs a thread hand-off
   * each way and runs them one at a time per file.
   */
  #syncWrite(slot: Slot, fd: number, offset: number, count: number): Promise<number> {
    const t0 = performance.now();
    // Deno takes numbers for i64 parameters (its types say bigint only).
    const rc = libc().pwritev(
      fd,
      slot.iov.addr as unknown as bigint,
      count,
      offset as unknown as bigint,
    );
    const errno = rc < 0 ? lastErrno() : 0;
    const t1 = performance.now();
    if (t1 - t0 > SYNC_SLOW_MS) this.#syncOffUntil = t1 + SYNC_COOL_MS;
    slot.iov.release(this.#pool);
    this.#free.push(slot);
    if (rc >= 0) return Promise.resolve(rc);
    const code = errnoCode(errno);
    return Promise.reject(
      new BlockError(code, `pwritev at offset ${offset}: ${strerror(code)}`, {
        offset,
        op: "write",
      }),
    );
  }

  #slotFreed(fd: number): Promise<void> {
    return new Promise((resolve, reject) => this.#slotWaiters.push({ fd, resolve, reject }));
  }

  /** Submits what is queued, then reaps: spinning briefly when shallow, else waiting. */
  #run(): void {
    if (this.#queued > 0) this.#submit();
    if (this.#waiting) return;
    if (this.#inflight > 0 && sinceTurn() >= YIELD_MS) {
      // Completions arriving inline (page-cache hits) would never let the event loop run:
      // collect them through the pool thread, which returns to the loop first.
      this.#waiting = this.#ring.enterWait().then(this.#onWait);
      return;
    }
    this.#reap();
    if (this.#inflight === 0) return;
    if (
      this.#inflight <= uringTuning.spinDepth && (this.#bigInflight === 0 || uringTuning.spinBig) &&
      this.#spinAllowed() && this.#spin()
    ) {
      this.#reap();
      if (this.#inflight > 0 && !this.#kickScheduled) {
        this.#kickScheduled = true;
        queueMicrotask(this.#kick);
      }
      return;
    }
    const t = uringTuning.timedWaitUs;
    if (
      t > 0 && this.#bigInflight === 0 && sinceTurn() < uringTuning.timedTurnMs &&
      performance.now() >= this.#timedOffUntil
    ) {
      const rc = this.#ring.enterTimed(
        0,
        t,
        Math.max(1, Math.floor(this.#inflight * uringTuning.timedMinFrac)),
      );
      // Nothing completed within the wait: a slow device; wait on the pool thread for a while.
      if (rc === -ETIME) this.#timedOffUntil = performance.now() + uringTuning.timedCoolMs;
      else if (rc >= 0 || rc === -EINTR) {
        this.#reap();
        if (this.#inflight > 0 && !this.#kickScheduled) {
          this.#kickScheduled = true;
          queueMicrotask(this.#kick);
        }
        return;
      }
    }
    this.#waiting = this.#ring.enterWait().then(this.#onWait);
  }

  #spinAllowed(): boolean {
    return sinceTurn() < YIELD_MS;
  }

  #spin(): boolean {
    const cq = this.#ring.cq;
    const tail = this.#ring.cqTail;
    const head = this.#cqHead;
    const deadline = performance.now() + uringTuning.spinMs;
    for (let n = 1;; n++) {
      if (Atomics.load(cq, tail) !== head) return true;
      if ((n & 31) === 0 && performance.now() > deadline) return false;
    }
  }

  #submit(): void {
    this.#ring.publish();
    const rc = this.#ring.enter(this.#queued, 0, 0);
    if (rc >= 0) {
      this.#queued -= rc;
    } else if (rc === -EINTR || rc === -EAGAIN || rc === -EBUSY) {
      // The kernel is short of resources: completions will free them; retry soon.
      setTimeout(this.#kick, 1);
    } else {
      this.#fail(-rc, "io_uring_enter");
    }
  }

  #reap(): void {
    const ring = this.#ring;
    const cq = ring.cq;
    const res = ring.cqRes;
    const mask = ring.cqEntries - 1;
    let head = this.#cqHead;
    const tail = Atomics.load(cq, ring.cqTail);
    if (head === tail) return;
    while (head !== tail) {
      const i = ring.cqes + ((head & mask) << 2);
      const lo = cq[i]!;
      const hi = cq[i + 1]!;
      const r = res[i + 2]!;
      head = (head + 1) >>> 0;
      this.#inflight--;
      if (hi === 0) this.#complete(this.#slots[lo]!, r);
    }
    this.#cqHead = head;
    Atomics.store(cq, ring.cqHead, head);
    if (this.#inflight === 0 && this.#idleWaiters.length > 0) {
      for (const w of this.#idleWaiters.splice(0)) w();
    }
  }

  #complete(slot: Slot, r: number): void {
    const resolve = slot.resolve!;
    const reject = slot.reject!;
    const op = slot.op;
    let err: BlockError | null = null;
    if (r >= 0) {
      if (op === OP.READV && slot.iov.bounce) slot.iov.finishRead(slot.qiov!, slot.qiovOffset, r);
    } else {
      const code = errnoCode(-r);
      const name = OP_NAMES[op] ?? "io";
      err = new BlockError(code, `io_uring ${name} at offset ${slot.offset}: ${strerror(code)}`, {
        offset: slot.offset,
        op: name,
      });
    }
    this.#releaseSlot(slot);
    if (err) reject(err);
    else resolve(r);
  }

  #releaseSlot(slot: Slot): void {
    if (slot.big) {
      slot.big = false;
      this.#bigInflight--;
    }
    slot.iov.release(this.#pool);
    slot.qiov = null;
    slot.resolve = null;
    slot.reject = null;
    const fd = slot.fd;
    slot.fd = -1;
    this.#free.push(slot);
    if (this.#slotWaiters.length > 0) this.#slotWaiters.shift()!.resolve();
    if (this.#drains.length > 0) this.#checkDrains(fd);
  }

  #checkDrains(fd: number): void {
    for (const s of this.#slots) if (s.fd === fd) return;
    const done = this.#drains.filter((d) => d.fd === fd);
    this.#drains = this.#drains.filter((d) => d.fd !== fd);
    for (const d of done) d.resolve();
  }

  /** Fails every request on a broken ring and refuses new ones. */
  #fail(errno: number, what: string): void {
    const code = errnoCode(errno);
    this.#broken = new BlockError(code, `${what}: ${strerror(code)}`);
    for (const s of this.#slots) {
      if (s.reject) {
        const reject = s.reject;
        this.#releaseSlot(s);
        reject(this.#broken);
      }
    }
    this.#inflight = 0;
    for (const w of this.#idleWaiters.splice(0)) w();
  }

  /** Cancels what is in flight on `fd` and resolves once nothing is. */
  drainFd(fd: number): Promise<void> {
    const canceled = new BlockError("ECANCELED", "Request canceled: the file is being closed");
    for (const w of this.#slotWaiters.filter((w) => w.fd === fd)) w.reject(canceled);
    this.#slotWaiters = this.#slotWaiters.filter((w) => w.fd !== fd);
    let busy = false;
    for (const s of this.#slots) {
      if (s.fd !== fd) continue;
      busy = true;
      if (s.cancelled) continue;
      s.cancelled = true;
      if (this.#ring.sqSpace === 0) this.#submit();
      this.#ring.prep(OP.ASYNC_CANCEL, -1, 0, s.index, 0, 0, 0, INTERNAL);
      this.#queued++;
      this.#inflight++;
    }
    if (!busy) return Promise.resolve();
    const done = new Promise<void>((resolve) => this.#drains.push({ fd, resolve }));
    this.#run();
    this.#checkDrains(fd);
    return done;
  }

  /** Waits for every request, wakes a pending waiter, then frees the ring and memory. */
  async shutdown(): Promise<void> {
    if (this.#inflight > 0) {
      await new Promise<void>((resolve) => this.#idleWaiters.push(resolve));
    }
    if (this.#waiting) {
      // A pending wait would keep the process alive: a NOP completes it.
      this.#ring.prep(OP.NOP, -1, 0, 0, 0, 0, 0, INTERNAL);
      this.#queued++;
      this.#inflight++;
      this.#submit();
      await this.#waiting;
    }
    this.#ring.close();
    this.#pool.destroy();
  }
}

let shared: UringEngine | null = null;
let users = 0;

/** One node's use of the shared ring: knows whether its file is open with O_DIRECT. */
class UringHandle implements IoEngine {
  readonly name = "io_uring" as const;
  readonly #engine: UringEngine;
  readonly #direct: boolean;
  #released = false;

  constructor(engine: UringEngine, direct: boolean) {
    this.#engine = engine;
    this.#direct = direct;
  }

  preadv(fd: number, offset: number, qiov: IoVector, qiovOffset: number, bytes: number) {
    return this.#engine.rw(OP.READV, fd, offset, qiov, qiovOffset, bytes, 0, this.#direct);
  }

  pwritev(
    fd: number,
    offset: number,
    qiov: IoVector,
    qiovOffset: number,
    bytes: number,
    fua: boolean,
  ): Promise<number> {
    const flags = fua ? RWF_DSYNC : 0;
    return this.#engine.rw(OP.WRITEV, fd, offset, qiov, qiovOffset, bytes, flags, this.#direct);
  }

  fsync(fd: number, datasync: boolean): Promise<void> {
    const flags = datasync ? FSYNC_DATASYNC : 0;
    return this.#engine.simple(OP.FSYNC, fd, 0, 0, 0, flags) as Promise<unknown> as Promise<void>;
  }

  fallocate(fd: number, mode: number, offset: number, length: number): Promise<void> {
    // io_uring's fallocate takes the length in `addr` and the mode in `len`.
    return this.#engine.simple(OP.FALLOCATE, fd, offset, length, mode, 0) as Promise<
      unknown
    > as Promise<void>;
  }

  drainFd(fd: number): Promise<void> {
    return this.#engine.drainFd(fd);
  }

  release(): Promise<void> {
    if (this.#released) return Promise.resolve();
    this.#released = true;
    if (--users > 0 || shared !== this.#engine) return Promise.resolve();
    shared = null;
    return this.#engine.shutdown();
  }
}

/**
 * Acquires the process's io_uring engine for one user (a file node), creating the ring at
 * the first acquire; `release()` drops the user and the last one frees the ring. Throws a
 * BlockError whose message is the reason when io_uring cannot start here (old kernel,
 * seccomp, `io_uring_disabled`, missing opcodes).
 */
export function createUringEngine(options: EngineOptions): IoEngine {
  if (!shared) {
    try {
      shared = new UringEngine();
    } catch (e) {
      if (e instanceof RingSetupError) throw BlockError.fromErrno(e.errno, e.message);
      throw new BlockError("ENOSYS", e instanceof Error ? e.message : String(e));
    }
    users = 0;
  }
  users++;
  return new UringHandle(shared, options.direct);
}
