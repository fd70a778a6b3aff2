/**
 * The native engine's kernel side: one AIO context, its completion ring, and a fixed set of
 * request slots in native memory (an iocb and an iovec array each), submitted in batches and
 * reaped from the ring. Nothing here allocates per request once warm; 64-bit fields are
 * written as two 32-bit halves so no BigInt is made on the hot path.
 *
 * @module
 */

import { BlockError, ERRNO, type IoVector, strerror } from "@blockgraph/core";
import {
  AIO_RING_HEADER,
  AIO_RING_MAGIC,
  type AioSymbols,
  countArgs,
  IO_EVENT_SIZE,
  IOCB_CMD,
  IOCB_SIZE,
  IOCB_WORD,
  RING_WORD,
  RWF_DSYNC,
} from "./aio_ffi.ts";
import { BufferPool } from "./buffer_pool.ts";
import { IOVEC_SIZE, NativeIovec } from "./iovec.ts";
import { addressOf, alignedAlloc, alignedFree } from "./libc.ts";

/** What a slot carries. */
export const OP = {
  /** preadv */
  READ: 0,
  /** pwritev */
  WRITE: 1,
  /** fsync or fdatasync */
  SYNC: 2,
  /** fallocate (never in a slot: it names the operation in errors) */
  FALLOCATE: 3,
} as const;

/** One of {@link OP}. */
export type SlotOp = (typeof OP)[keyof typeof OP];

/** How many iovecs a slot holds; a request with more segments is bounced whole. */
const IOV_PER_SLOT = 64;
const TWO_32 = 0x1_0000_0000;
/**
 * iocbs per io_submit call. Several small submissions beat one big one on a virtio disk:
 * at depth 32, chunks of 4 matched fio (which submits one at a time) where whole batches
 * lost 15-25%, as the notes measured for io_uring too.
 */
const SUBMIT_CHUNK = 4;
const FREE = 0;
const QUEUED = 1;
const IN_FLIGHT = 2;

/** One request slot: its iocb's index, iovec array, and the request it carries. */
export class AioSlot {
  /** The slot's index (its iocb's aio_data). */
  readonly index: number;
  /** The slot's iovec array. */
  readonly iov: NativeIovec;
  /** The iocb's address, for io_cancel. */
  readonly iocb: Deno.PointerObject;
  /** FREE, QUEUED or IN_FLIGHT. */
  state = FREE;
  /** The operation. */
  op: SlotOp = OP.READ;
  /** The file descriptor. */
  fd = -1;
  /** The file offset, for errors. */
  offset = 0;
  /** The caller's vector, kept referenced until the kernel is done with it. */
  qiov: IoVector | null = null;
  /** Where the request starts in `qiov`. */
  qiovOffset = 0;
  /** The bytes asked for. */
  bytes = 0;
  /** Settles the caller's promise with the byte count. */
  resolve: ((n: number) => void) | null = null;
  /** Settles the caller's promise with an error. */
  reject: ((e: BlockError) => void) | null = null;

  constructor(index: number, iov: NativeIovec, iocb: Deno.PointerObject) {
    this.index = index;
    this.iov = iov;
    this.iocb = iocb;
  }
}

/** The AIO context and its slots. `complete(slot, res)` is called for every completion. */
export class AioSlots {
  /** The slots, by index. */
  readonly slots: AioSlot[] = [];
  /** Requests in the kernel. */
  inflight = 0;
  /** Whether an io_getevents wait is running on a pool thread. */
  waiting = false;
  /** Whether the context is gone. */
  destroyed = false;
  /** Whether completions can be read from the ring in user space. */
  readonly userRing: boolean;
  readonly #lib: AioSymbols;
  readonly #complete: (slot: AioSlot, res: number) => void;
  readonly #ctx: Deno.PointerObject;
  readonly #mem: Deno.PointerObject;
  readonly #pool = new BufferPool(4096);
  readonly #iocbs: Uint32Array;
  readonly #iocbAddr: number;
  readonly #ptrs: Uint32Array;
  readonly #ptrAt: Deno.PointerObject[] = [];
  readonly #events: Int32Array;
  readonly #eventsPtr: Deno.PointerObject;
  readonly #zeroTime: Deno.PointerObject;
  readonly #scratch: Deno.PointerObject;
  readonly #ring: Int32Array;
  readonly #ringNr: number;
  readonly #counts: Deno.PointerValue[];
  readonly #nrBig: bigint;
  readonly #free: number[] = [];
  readonly #queue: number[] = [];

  /** Sets up a context for `n` requests. Throws a BlockError with io_setup's errno. */
  constructor(lib: AioSymbols, n: number, complete: (slot: AioSlot, res: number) => void) {
    this.#lib = lib;
    this.#complete = complete;
    this.#counts = countArgs(n);
    this.#nrBig = BigInt(n);
    const out = new BigUint64Array(1);
    const rc = lib.io_setup(n, new Uint8Array(out.buffer));
    if (rc < 0) {
      const e = BlockError.fromErrno(-rc);
      throw new BlockError(
        e.code,
        `Could not set up a kernel AIO context for ${n} requests: ${strerror(e.code)}` +
          (e.code === "EAGAIN" ? " (see /proc/sys/fs/aio-max-nr)" : ""),
      );
    }
    this.#ctx = Deno.UnsafePointer.create(out[0]!)!;
    const head = new Uint32Array(Deno.UnsafePointerView.getArrayBuffer(this.#ctx, 32));
    this.#ringNr = head[RING_WORD.NR]!;
    this.userRing = head[RING_WORD.MAGIC] === AIO_RING_MAGIC && head[RING_WORD.INCOMPAT] === 0;
    this.#ring = new Int32Array(
      Deno.UnsafePointerView.getArrayBuffer(
        this.#ctx,
        AIO_RING_HEADER + this.#ringNr * IO_EVENT_SIZE,
      ),
    );
    // One block: iocbs, the iocb pointer array, io_events, a zero timespec and a scratch
    // io_event, then the iovec arrays.
    const ptrsAt = n * IOCB_SIZE;
    const eventsAt = ptrsAt + n * 8;
    const zeroAt = eventsAt + n * IO_EVENT_SIZE;
    const iovAt = zeroAt + 64;
    const size = iovAt + n * IOV_PER_SLOT * IOVEC_SIZE;
    try {
      this.#mem = alignedAlloc(size, 4096);
    } catch (e) {
      lib.io_destroy(this.#ctx);
      throw new BlockError("ENOMEM", `Could not allocate ${size} bytes for AIO requests`, {
        cause: e,
      });
    }
    const base = addressOf(this.#mem);
    const bytes = new Uint8Array(Deno.UnsafePointerView.getArrayBuffer(this.#mem, size));
    bytes.fill(0);
    this.#iocbs = new Uint32Array(bytes.buffer, 0, ptrsAt / 4);
    this.#iocbAddr = base;
    this.#ptrs = new Uint32Array(bytes.buffer, ptrsAt, n * 2);
    for (let i = 0; i < n; i++) {
      this.#ptrAt.push(Deno.UnsafePointer.offset(this.#mem, ptrsAt + i * 8)!);
    }
    this.#events = new Int32Array(bytes.buffer, eventsAt, n * 8);
    this.#eventsPtr = Deno.UnsafePointer.offset(this.#mem, eventsAt)!;
    this.#zeroTime = Deno.UnsafePointer.offset(this.#mem, zeroAt)!;
    this.#scratch = Deno.UnsafePointer.offset(this.#mem, zeroAt + 32)!;
    for (let i = 0; i < n; i++) {
      const at = iovAt + i * IOV_PER_SLOT * IOVEC_SIZE;
      const iov = new NativeIovec(
        bytes.subarray(at, at + IOV_PER_SLOT * IOVEC_SIZE),
        base + at,
        IOV_PER_SLOT,
      );
      this.slots.push(new AioSlot(i, iov, Deno.UnsafePointer.offset(this.#mem, i * IOCB_SIZE)!));
      this.#iocbs[i * 16 + IOCB_WORD.DATA] = i;
      this.#free.push(n - 1 - i);
    }
  }

  /** A free slot, or undefined when all are in use. */
  take(): AioSlot | undefined {
    const i = this.#free.pop();
    return i === undefined ? undefined : this.slots[i];
  }

  /** Returns a slot whose request has settled. */
  give(slot: AioSlot): void {
    slot.state = FREE;
    slot.qiov = null;
    slot.resolve = null;
    slot.reject = null;
    this.#free.push(slot.index);
  }

  /**
   * Fills `slot`'s iocb for the request and queues it for the next {@link submit}. For SYNC,
   * `flag` means datasync; for WRITE, FUA. Returns 0, or an errno when the request cannot be
   * described (a vector shorter than the request, no memory for a bounce buffer).
   */
  prepare(
    slot: AioSlot,
    op: SlotOp,
    fd: number,
    offset: number,
    qiov: IoVector | null,
    qiovOffset: number,
    bytes: number,
    flag: boolean,
    direct: boolean,
  ): number {
    slot.op = op;
    slot.fd = fd;
    slot.offset = op === OP.SYNC ? -1 : offset;
    slot.qiov = qiov;
    slot.qiovOffset = qiovOffset;
    slot.bytes = bytes;
    const w = this.#iocbs;
    const b = slot.index * 16;
    w[b + IOCB_WORD.FILDES] = fd;
    if (op === OP.SYNC || qiov === null) {
      w[b + IOCB_WORD.OPCODE] = flag ? IOCB_CMD.FDSYNC : IOCB_CMD.FSYNC;
      w[b + IOCB_WORD.RW_FLAGS] = 0;
      w.fill(0, b + IOCB_WORD.BUF, b + IOCB_WORD.OFFSET + 2);
    } else {
      let n: number;
      try {
        n = slot.iov.fill(qiov, qiovOffset, bytes, direct, op === OP.WRITE, this.#pool);
      } catch (e) {
        slot.iov.release(this.#pool);
        return e instanceof RangeError ? ERRNO.EINVAL : ERRNO.ENOMEM;
      }
      const addr = slot.iov.addr;
      w[b + IOCB_WORD.OPCODE] = op === OP.WRITE ? IOCB_CMD.PWRITEV : IOCB_CMD.PREADV;
      w[b + IOCB_WORD.RW_FLAGS] = flag && op === OP.WRITE ? RWF_DSYNC : 0;
      w[b + IOCB_WORD.BUF] = addr >>> 0;
      w[b + IOCB_WORD.BUF + 1] = (addr / TWO_32) >>> 0;
      w[b + IOCB_WORD.NBYTES] = n;
      w[b + IOCB_WORD.NBYTES + 1] = 0;
      w[b + IOCB_WORD.OFFSET] = offset >>> 0;
      w[b + IOCB_WORD.OFFSET + 1] = (offset / TWO_32) >>> 0;
    }
    slot.state = QUEUED;
    this.#queue.push(slot.index);
    return 0;
  }

  /** Requests prepared but not yet submitted. */
  get queued(): number {
    return this.#queue.length;
  }

  /**
   * Submits every queued request, {@link SUBMIT_CHUNK} per io_submit (a request the kernel
   * refuses completes at once with the error). Stops early when the context is full; the rest
   * stay queued.
   */
  submit(): void {
    const q = this.#queue;
    const total = q.length;
    if (total === 0 || this.destroyed) return;
    const p = this.#ptrs;
    for (let i = 0; i < total; i++) {
      const a = this.#iocbAddr + q[i]! * IOCB_SIZE;
      p[2 * i] = a >>> 0;
      p[2 * i + 1] = (a / TWO_32) >>> 0;
    }
    let done = 0;
    while (done < total) {
      const want = Math.min(SUBMIT_CHUNK, total - done);
      const r = this.#lib.io_submit(this.#ctx, this.#counts[want]!, this.#ptrAt[done]!);
      if (r > 0) {
        for (let i = done; i < done + r; i++) this.slots[q[i]!]!.state = IN_FLIGHT;
        this.inflight += r;
        done += r;
      } else if (r === -ERRNO.EAGAIN && this.inflight > 0) {
        break;
      } else {
        // The first remaining iocb was refused (EBADF, EINVAL, ...): it fails alone.
        const slot = this.slots[q[done++]!]!;
        slot.state = IN_FLIGHT;
        this.inflight++;
        this.#settle(slot, r < 0 ? r : -ERRNO.EIO);
      }
    }
    q.splice(0, done);
  }

  #settle(slot: AioSlot, res: number): void {
    this.inflight--;
    if (res >= 0 && slot.op === OP.READ && slot.qiov) {
      slot.iov.finishRead(slot.qiov, slot.qiovOffset, res);
      // Short only at the end of the file: the rest reads as zeros (IoEngine.preadv).
      if (res < slot.bytes) slot.qiov.fill(slot.qiovOffset + res, slot.bytes - res, 0);
    }
    slot.iov.release(this.#pool);
    this.#complete(slot, res);
  }

  /** Reaps the completions that are there, without waiting; returns how many. */
  reap(): number {
    if (this.waiting || this.destroyed) return 0;
    if (!this.userRing) {
      const r = this.#lib.io_getevents(
        this.#ctx,
        0n,
        this.#nrBig,
        this.#eventsPtr,
        this.#zeroTime,
      );
      return this.#settleEvents(r);
    }
    const ring = this.#ring;
    let head = Atomics.load(ring, RING_WORD.HEAD);
    const tail = Atomics.load(ring, RING_WORD.TAIL);
    if (head === tail) return 0;
    let n = 0;
    while (head !== tail) {
      const w = 8 + head * 8;
      const slot = this.slots[ring[w]!]!;
      const res = ring[w + 4]!;
      if (++head === this.#ringNr) head = 0;
      Atomics.store(ring, RING_WORD.HEAD, head);
      n++;
      this.#settle(slot, res);
    }
    return n;
  }

  #settleEvents(r: number): number {
    const ev = this.#events;
    for (let i = 0; i < r; i++) this.#settle(this.slots[ev[i * 8]!]!, ev[i * 8 + 4]!);
    return r > 0 ? r : 0;
  }

  /** Spins on the ring's tail for up to `ms` milliseconds; true when a completion came. */
  spin(ms: number): boolean {
    const ring = this.#ring;
    const head = Atomics.load(ring, RING_WORD.HEAD);
    const deadline = performance.now() + ms;
    for (let i = 1;; i++) {
      if (Atomics.load(ring, RING_WORD.TAIL) !== head) return true;
      if ((i & 63) === 0 && performance.now() > deadline) return false;
    }
  }

  /**
   * Waits on a pool thread for at least one completion, settles what came, then calls
   * `after` with the count. Only one wait runs at a time, and the ring is not read in user
   * space meanwhile (the kernel moves its head).
   */
  wait(after: (n: number) => void): void {
    this.waiting = true;
    this.#lib.io_getevents_wait(this.#ctx, 1n, this.#nrBig, this.#eventsPtr, null)
      .then((r) => {
        this.waiting = false;
        // r < 0 is EINTR (the caller waits again) or EINVAL once the context is destroyed.
        after(this.destroyed ? 0 : this.#settleEvents(r));
      });
  }

  /** Whether a request on `fd` (any, for null) is queued or in the kernel. */
  busy(fd: number | null): boolean {
    for (const s of this.slots) if (s.state !== FREE && (fd === null || s.fd === fd)) return true;
    return false;
  }

  /**
   * Offers the requests in the kernel on `fd` (all, for null) to io_cancel. Regular files'
   * reads and writes cannot be cancelled (the kernel says EINVAL) and complete as usual;
   * those that can be come back through the ring with ECANCELED.
   */
  cancel(fd: number | null): void {
    for (const s of this.slots) {
      if (s.state === IN_FLIGHT && (fd === null || s.fd === fd)) {
        this.#lib.io_cancel(this.#ctx, s.iocb, this.#scratch);
      }
    }
  }

  /**
   * Destroys the context (on a pool thread: the kernel waits for what is in flight, and
   * wakes a pending wait) and frees the memory. Nothing may be in flight.
   */
  async destroy(): Promise<void> {
    if (this.destroyed) return;
    this.destroyed = true;
    await this.#lib.io_destroy(this.#ctx);
    this.#pool.destroy();
    alignedFree(this.#mem);
  }
}
