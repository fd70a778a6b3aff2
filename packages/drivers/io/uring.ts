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
 * The policies (spin depth, wait lengths, submit batching, io-wq hand-offs) and what was
 * measured for each are in `uring_tuning.ts`. Small page-cache writes may skip the ring and
 * run on the JS thread (`uring_inline.ts`).
 *
 * The hot path allocates only the request's promise: preallocated slots, one reused native
 * iovec array per slot, addresses as numbers, 64-bit fields written as 32-bit halves.
 *
 * @module
 */

import { BlockError, errnoCode, type IoVector, strerror } from "@blockgraph/core";
import { BufferPool } from "./buffer_pool.ts";
import { type EngineOptions, type IoEngine, SYNC_FILE_RANGE_WRITE } from "./engine.ts";
import { IOVEC_SIZE, NativeIovec } from "./iovec.ts";
import { type HostFiles, hostFiles } from "./posix_file.ts";
import { markTurn, nextTurn, sinceTurn, timersStarved } from "./loop_turn.ts";
import { uringTuning, YIELD_MS } from "./uring_tuning.ts";
import { INLINE_AFTER_TURN, INLINE_NOW, InlineWrites } from "./uring_inline.ts";
import {
  ENTER_GETEVENTS,
  FSYNC_DATASYNC,
  IOSQE_ASYNC,
  OP,
  Ring,
  RingSetupError,
  RWF_DSYNC,
  SETUP_COOP_TASKRUN,
} from "./uring_ring.ts";

/** SQ entries (the kernel makes the CQ twice as large) and request slots. */
const ENTRIES = 256;
/** iovecs per slot; requests with more segments are bounced whole. */
const IOV_PER_SLOT = 64;
/** `user_data` high word of requests that have no slot (cancel, wake-up NOP). */
const INTERNAL = 1;
const EINTR = 4;
const EAGAIN = 11;
const EBUSY = 16;
const ETIME = 62;

const OP_NAMES: Record<number, string> = {
  [OP.READV]: "read",
  [OP.WRITEV]: "write",
  [OP.FSYNC]: "flush",
  [OP.FALLOCATE]: "fallocate",
  [OP.SYNC_FILE_RANGE]: "writeback",
};

/** A hint's outcome, which nobody waits on. */
const ignore = (): void => {};

/** A request slot: the state of one request between submission and completion. */
class Slot {
  readonly index: number;
  readonly iov: NativeIovec;
  fd = -1;
  op = 0;
  offset = 0;
  qiov: IoVector | null = null;
  qiovOffset = 0;
  bytes = 0;
  cancelled = false;
  big = false;
  mutating = false;
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
  #bigWritesInflight = 0;
  readonly #inline = new InlineWrites();
  #cqHead: number;
  #kickScheduled = false;
  #waiting: Promise<void> | null = null;
  #broken: BlockError | null = null;
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

  readonly #afterTurn = (): void => {
    this.#waiting = null;
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
      OP.SYNC_FILE_RANGE,
    ], uringTuning.coopTaskrun ? SETUP_COOP_TASKRUN : 0);
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
    let inline = false;
    if (op === OP.WRITEV && !direct && this.#inline.candidate(bytes, rwFlags)) {
      const how = this.#inline.when();
      if (how === INLINE_AFTER_TURN) {
        return nextTurn().then(() =>
          this.rw(op, fd, offset, qiov, qiovOffset, bytes, rwFlags, direct)
        );
      }
      inline = how === INLINE_NOW;
    }
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
    if (inline) {
      const p = this.#inline.write(fd, slot.iov.bytes, count, offset);
      slot.iov.release(this.#pool);
      this.#free.push(slot);
      return p;
    }
    if (op === OP.WRITEV && !direct) this.#enteredInode(slot);
    slot.qiov = qiov;
    slot.qiovOffset = qiovOffset;
    slot.bytes = bytes;
    const t = uringTuning;
    if (!direct && t.asyncBytes > 0 && bytes >= t.asyncBytes) {
      slot.big = true;
      this.#bigInflight++;
      const write = op === OP.WRITEV;
      if (write) this.#bigWritesInflight++;
      return this.#start(
        slot,
        op,
        fd,
        offset,
        slot.iov.addr,
        count,
        rwFlags,
        t.earlyBig,
        (write ? t.asyncOn : t.asyncReads === true ||
            (t.asyncReads === "auto" && this.#bigWritesInflight === 0))
          ? IOSQE_ASYNC
          : 0,
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
    if (op !== OP.NOP) this.#enteredInode(slot);
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

  /** `slot` may hold its file's inode lock while in the ring: no inline write meanwhile. */
  #enteredInode(slot: Slot): void {
    slot.mutating = true;
    this.#inline.entered();
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
      // collect them through the pool thread, which returns to the loop first; or, when
      // that has kept timers from running, through a zero timeout that lets them run (the
      // completions wait in the CQ meanwhile).
      this.#waiting = timersStarved()
        ? nextTurn().then(this.#afterTurn)
        : this.#ring.enterWait().then(this.#onWait);
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
    const ring = this.#ring;
    const cq = ring.cq;
    const tail = ring.cqTail;
    const head = this.#cqHead;
    const coop = ring.coopTaskrun;
    const deadline = performance.now() + uringTuning.spinMs;
    for (let n = 1;; n++) {
      if (Atomics.load(cq, tail) !== head) return true;
      // A device completion waits for this thread in the kernel: go and post it.
      if (coop && ring.taskrunPending()) ring.enter(0, 0, ENTER_GETEVENTS);
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
    if (ring.coopTaskrun && ring.taskrunPending()) ring.enter(0, 0, ENTER_GETEVENTS);
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
      if (op === OP.READV) {
        if (slot.iov.bounce) slot.iov.finishRead(slot.qiov!, slot.qiovOffset, r);
        // Short only at the end of the file: the rest reads as zeros (IoEngine.preadv).
        if (r < slot.bytes) slot.qiov!.fill(slot.qiovOffset + r, slot.bytes - r, 0);
      }
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
    if (slot.mutating) {
      slot.mutating = false;
      this.#inline.left();
    }
    if (slot.big) {
      slot.big = false;
      this.#bigInflight--;
      if (slot.op === OP.WRITEV) this.#bigWritesInflight--;
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

  startWriteback(fd: number, offset: number, length: number): Promise<void> {
    // The SQE's length is 32 bits; 0 means through the end of the file.
    const len = length > 0xffffffff ? 0 : length;
    return this.#engine.simple(OP.SYNC_FILE_RANGE, fd, offset, 0, len, SYNC_FILE_RANGE_WRITE)
      .then(ignore, ignore);
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

  /** Any descriptor: the C library's calls where they load, else `node:fs`'s. */
  files(): Promise<HostFiles> {
    return hostFiles();
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
