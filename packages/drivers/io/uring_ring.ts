/**
 * One io_uring instance mapped into the process: set-up, the SQ and CQ rings and the SQE
 * array as typed-array views, SQE writing and CQE reading. No policy here: the engine in
 * `uring.ts` decides when to submit and how to wait.
 *
 * Layouts (x86-64 and arm64): io_uring_params is 120 bytes with sq_off at 40 and cq_off at
 * 80; an SQE is 64 bytes, a CQE 16.
 *
 * @module
 */

import { ERRNO, errnoCode, strerror } from "@blockgraph/core";
import { lastErrno, libc, MMAP, SYS } from "./libc.ts";

/** io_uring opcodes the engine uses. */
export const OP = {
  NOP: 0,
  READV: 1,
  WRITEV: 2,
  FSYNC: 3,
  SYNC_FILE_RANGE: 8,
  ASYNC_CANCEL: 14,
  FALLOCATE: 17,
} as const;

/** `io_uring_enter` flag: wait for completions. */
export const ENTER_GETEVENTS = 1;
/** IORING_ENTER_EXT_ARG: the last two arguments are a getevents_arg and its size. */
export const ENTER_EXT_ARG = 8;
/** `fsync_flags`: fdatasync rather than fsync. */
export const FSYNC_DATASYNC = 1;
/** `rw_flags`: per-write O_DSYNC (FUA). */
export const RWF_DSYNC = 2;
/** SQE flag: issue the request from an io-wq worker, never inline at submit. */
export const IOSQE_ASYNC = 16;

/**
 * IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG (Linux 5.19): completion work meant
 * for the submitting thread waits until it next enters the kernel, rather than interrupting
 * it in user space, and the SQ ring's flags say when some is pending.
 */
export const SETUP_COOP_TASKRUN = (1 << 8) | (1 << 9);
/** IORING_SQ_TASKRUN: completion work is pending; an enter with GETEVENTS runs it. */
const SQ_TASKRUN = 2;
/** sizeof(struct io_uring_getevents_arg), the last argument of an EXT_ARG enter. */
const EXT_ARG_SIZE = 24n;

const FEAT_SINGLE_MMAP = 1;
const OFF_SQ_RING = 0n;
const OFF_CQ_RING = 0x8000000n;
const OFF_SQES = 0x10000000n;
const REGISTER_PROBE = 8;
const PROBE_OPS = 256;
const TWO_32 = 0x1_0000_0000;
const MAP_FAILED = 0xffff_ffff_ffff_ffffn;

/** Why a ring could not be made: the failing step and its errno. */
export class RingSetupError extends Error {
  /** The errno of the failing call. */
  readonly errno: number;
  /** Creates the error: `step` names the call (`io_uring_setup`). */
  constructor(step: string, errno: number, text: string) {
    super(`${step}: ${text}`);
    this.errno = errno;
  }
}

interface Mapping {
  ptr: Deno.PointerObject;
  size: number;
}

function map(fd: number, size: number, offset: bigint): Mapping {
  const ptr = libc().mmap(
    null,
    BigInt(size),
    MMAP.PROT_READ | MMAP.PROT_WRITE,
    MMAP.MAP_SHARED | MMAP.MAP_POPULATE,
    fd,
    offset,
  );
  if (ptr === null || Deno.UnsafePointer.value(ptr) === MAP_FAILED) {
    throw new RingSetupError("mmap", lastErrno(), "cannot map the io_uring rings");
  }
  return { ptr, size };
}

/** A mapped io_uring: raw access for the engine. */
export class Ring {
  /** The ring's file descriptor. */
  readonly fd: number;
  /** SQ size (a power of two). */
  readonly sqEntries: number;
  /** CQ size. */
  readonly cqEntries: number;
  /** The SQE array as 32-bit words (16 per SQE). */
  readonly sqes: Uint32Array;
  /** The SQ ring as 32-bit words. */
  readonly sq: Uint32Array;
  /** The CQ ring as 32-bit words (a CQE is 4 words: user_data lo, hi, res, flags). */
  readonly cq: Uint32Array;
  /** The CQ ring as signed words, for `res`. */
  readonly cqRes: Int32Array;
  /** Word index of the SQ head. */
  readonly sqHead: number;
  /** Word index of the SQ tail. */
  readonly sqTail: number;
  /** Word index of the CQ head. */
  readonly cqHead: number;
  /** Word index of the CQ tail. */
  readonly cqTail: number;
  /** Word index of the first CQE. */
  readonly cqes: number;
  /** The SQ tail as we have written it (published by {@link publish}). */
  tail = 0;
  readonly #maps: Mapping[];
  #closed = false;
  /** The getevents_arg (24 bytes) and its timespec (16) of {@link enterTimed}. */
  readonly #waitBuf = new Uint8Array(40);
  readonly #waitWords = new Uint32Array(this.#waitBuf.buffer);
  readonly #waitArg = { ptr: Deno.UnsafePointer.of(this.#waitBuf) };

  /** The SQ ring's flags word (IORING_SQ_*). */
  readonly #sqFlags: number;
  /** Whether the ring was set up with {@link SETUP_COOP_TASKRUN}. */
  readonly coopTaskrun: boolean;

  /**
   * Sets up a ring of `entries` SQEs, with `setupFlags` when the kernel takes them (without,
   * when it says EINVAL); throws {@link RingSetupError} when it cannot.
   */
  constructor(entries: number, requiredOps: readonly number[], setupFlags = 0) {
    const c = libc();
    let params = new Uint8Array(120);
    new DataView(params.buffer).setUint32(8, setupFlags, true);
    let fd = c.setup(BigInt(SYS.IO_URING_SETUP), entries, params);
    let flags = setupFlags;
    if (fd < 0 && setupFlags !== 0 && lastErrno() === ERRNO.EINVAL) {
      // An older kernel: the flags are an optimisation, so go on without them.
      params = new Uint8Array(120);
      flags = 0;
      fd = c.setup(BigInt(SYS.IO_URING_SETUP), entries, params);
    }
    if (fd < 0) {
      const errno = lastErrno();
      throw new RingSetupError("io_uring_setup", errno, errnoText(errno));
    }
    this.fd = fd;
    this.coopTaskrun = (flags & SETUP_COOP_TASKRUN) === SETUP_COOP_TASKRUN;
    const maps: Mapping[] = [];
    try {
      checkOps(fd, requiredOps);
      const p = new DataView(params.buffer);
      this.sqEntries = p.getUint32(0, true);
      this.cqEntries = p.getUint32(4, true);
      const features = p.getUint32(20, true);
      const sqOff = (k: number) => p.getUint32(40 + k * 4, true);
      const cqOff = (k: number) => p.getUint32(80 + k * 4, true);
      const sqSize = sqOff(6) + this.sqEntries * 4;
      const cqSize = cqOff(5) + this.cqEntries * 16;
      let sqMap: Mapping;
      let cqMap: Mapping;
      if (features & FEAT_SINGLE_MMAP) {
        sqMap = cqMap = map(fd, Math.max(sqSize, cqSize), OFF_SQ_RING);
        maps.push(sqMap);
      } else {
        maps.push(sqMap = map(fd, sqSize, OFF_SQ_RING));
        maps.push(cqMap = map(fd, cqSize, OFF_CQ_RING));
      }
      const sqeMap = map(fd, this.sqEntries * 64, OFF_SQES);
      maps.push(sqeMap);
      this.sq = new Uint32Array(Deno.UnsafePointerView.getArrayBuffer(sqMap.ptr, sqMap.size));
      const cqBuf = Deno.UnsafePointerView.getArrayBuffer(cqMap.ptr, cqMap.size);
      this.cq = new Uint32Array(cqBuf);
      this.cqRes = new Int32Array(cqBuf);
      this.sqes = new Uint32Array(
        Deno.UnsafePointerView.getArrayBuffer(sqeMap.ptr, sqeMap.size),
      );
      this.#sqFlags = sqOff(4) >> 2;
      this.sqHead = sqOff(0) >> 2;
      this.sqTail = sqOff(1) >> 2;
      this.cqHead = cqOff(0) >> 2;
      this.cqTail = cqOff(1) >> 2;
      this.cqes = cqOff(5) >> 2;
      // The SQ index array is the identity, once: SQE i is always slot i of the ring.
      const array = sqOff(6) >> 2;
      for (let i = 0; i < this.sqEntries; i++) this.sq[array + i] = i;
      this.tail = Atomics.load(this.sq, this.sqTail);
      this.#maps = maps;
      // The arg's ts field points at the timespec that follows it.
      const ts = BigInt(Deno.UnsafePointer.value(this.#waitArg.ptr)) + 24n;
      new DataView(this.#waitBuf.buffer).setBigUint64(16, ts, true);
    } catch (e) {
      for (const m of maps) c.munmap(m.ptr, BigInt(m.size));
      c.close(fd);
      throw e;
    }
  }

  /** SQEs written but not yet consumed by the kernel, and free SQ entries. */
  get sqSpace(): number {
    return this.sqEntries - ((this.tail - Atomics.load(this.sq, this.sqHead)) >>> 0);
  }

  /**
   * Writes the next SQE; the caller publishes it with {@link publish} and submits with
   * `io_uring_enter`. 64-bit fields are written as two 32-bit halves (no BigInt).
   */
  prep(
    op: number,
    fd: number,
    offset: number,
    addr: number,
    len: number,
    opFlags: number,
    dataLo: number,
    dataHi: number,
    sqeFlags = 0,
  ): void {
    const w = this.sqes;
    const b = (this.tail & (this.sqEntries - 1)) << 4;
    // Word 0: opcode (u8), flags (u8), ioprio (u16, 0).
    w[b] = op | (sqeFlags << 8);
    w[b + 1] = fd;
    w[b + 2] = offset >>> 0;
    w[b + 3] = (offset / TWO_32) >>> 0;
    w[b + 4] = addr >>> 0;
    w[b + 5] = (addr / TWO_32) >>> 0;
    w[b + 6] = len;
    w[b + 7] = opFlags;
    w[b + 8] = dataLo;
    w[b + 9] = dataHi;
    w[b + 10] = 0;
    w[b + 11] = 0;
    w[b + 12] = 0;
    w[b + 13] = 0;
    w[b + 14] = 0;
    w[b + 15] = 0;
    this.tail = (this.tail + 1) >>> 0;
  }

  /**
   * Whether completion work waits for this thread to enter the kernel (only with
   * {@link SETUP_COOP_TASKRUN}): until it does, the CQEs of requests that completed on a
   * device interrupt do not show in the CQ ring.
   */
  taskrunPending(): boolean {
    return (Atomics.load(this.sq, this.#sqFlags) & SQ_TASKRUN) !== 0;
  }

  /** Makes the written SQEs visible to the kernel. */
  publish(): void {
    Atomics.store(this.sq, this.sqTail, this.tail);
  }

  /**
   * `io_uring_enter(fd, toSubmit, minComplete, flags)` on the JS thread: returns the result,
   * or -errno.
   */
  enter(toSubmit: number, minComplete: number, flags: number): number {
    const rc = libc().enter(SYS.IO_URING_ENTER, this.fd, toSubmit, minComplete, flags, null);
    return rc < 0 ? -lastErrno() : rc;
  }

  /**
   * Submits `toSubmit` and waits on the JS thread for one completion, at most `usec`
   * microseconds (IORING_ENTER_EXT_ARG with a timeout): the thread sleeps in the kernel and
   * wakes at the completion, without a hand-off to another thread. Returns the number
   * submitted, or -errno (-ETIME: nothing completed in time).
   */
  enterTimed(toSubmit: number, usec: number, minComplete = 1): number {
    const a = this.#waitArg;
    // struct io_uring_getevents_arg { u64 sigmask; u32 sigmask_sz; u32 pad; u64 ts; } and
    // struct __kernel_timespec { i64 tv_sec; i64 tv_nsec; } right after it.
    this.#waitWords[6] = Math.floor(usec / 1e6);
    this.#waitWords[8] = (usec % 1e6) * 1000;
    const rc = libc().enterArg(
      SYS.IO_URING_ENTER,
      this.fd,
      toSubmit,
      minComplete,
      ENTER_GETEVENTS | ENTER_EXT_ARG,
      a.ptr,
      // A BigInt constant: a number here would deoptimize the caller (`pwritev` in `libc.ts`).
      EXT_ARG_SIZE,
    );
    return rc < 0 ? -lastErrno() : rc;
  }

  /** Waits for one completion on a pool thread; resolves with the raw result (-1: error). */
  enterWait(): Promise<number> {
    return libc().enterWait(SYS.IO_URING_ENTER, this.fd, 0, 1, ENTER_GETEVENTS, null);
  }

  /** Unmaps the rings and closes the descriptor. No view may be touched afterwards. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    const c = libc();
    for (const m of this.#maps) c.munmap(m.ptr, BigInt(m.size));
    c.close(this.fd);
  }
}

function checkOps(fd: number, ops: readonly number[]): void {
  const probe = new Uint8Array(16 + PROBE_OPS * 8);
  const rc = libc().register(BigInt(SYS.IO_URING_REGISTER), fd, REGISTER_PROBE, probe, PROBE_OPS);
  if (rc < 0) {
    const errno = lastErrno();
    throw new RingSetupError("io_uring_register(PROBE)", errno, errnoText(errno));
  }
  const last = probe[0]!;
  for (const op of ops) {
    // io_uring_probe_op: u8 op, u8 resv, u16 flags (IO_URING_OP_SUPPORTED = 1), u32 resv2.
    if (op > last || (probe[16 + op * 8 + 2]! & 1) === 0) {
      throw new RingSetupError("io_uring", 95, `the kernel lacks opcode ${op}`);
    }
  }
}

/** strerror for an errno number, in the C library's words where core knows them. */
export function errnoText(errno: number): string {
  const code = errnoCode(errno);
  return ERRNO[code] === errno ? strerror(code) : `errno ${errno}`;
}
