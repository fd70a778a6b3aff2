/**
 * Native `struct iovec` arrays built from {@link IoVector} ranges, for engines that hand
 * vectors to the kernel. For O_DIRECT, caller segments whose address or length is not
 * aligned are gathered into runs in an aligned bounce buffer; aligned segments go to the
 * kernel as they are. Built in place in preallocated memory: nothing is allocated per
 * request once the bounce pool is warm.
 *
 * @module
 */

import type { IoVector } from "@blockgraph/core";
import type { AlignedBuffer, BufferPool } from "./buffer_pool.ts";
import { viewAddress } from "./libc.ts";

/** The alignment O_DIRECT segments are held to (address and length). */
export const DIRECT_ALIGN = 4096;
const MASK = DIRECT_ALIGN - 1;
const TWO_32 = 0x1_0000_0000;

/** The size of one `struct iovec`. */
export const IOVEC_SIZE = 16;

/**
 * One reusable iovec array in native memory, with the bounce state of the request it
 * describes. Engines keep one per request slot.
 */
export class NativeIovec {
  /** The address of the first iovec, for the kernel. */
  readonly addr: number;
  /** The iovecs' memory, for a call that takes them as a buffer. */
  readonly bytes: Uint8Array;
  /** How many iovecs the array holds at most. */
  readonly capacity: number;
  /** How many iovecs the current request uses. */
  count = 0;
  /** The bounce buffer of the current request, if any segment needed one. */
  bounce: AlignedBuffer | null = null;
  readonly #words: Uint32Array;
  /** Read copy-back records: (request offset, bounce offset, length) triples. */
  readonly #copies: number[] = [];
  #nCopies = 0;

  /** Wraps `capacity` iovecs of native memory at `bytes` (whose address is `addr`). */
  constructor(bytes: Uint8Array, addr: number, capacity: number) {
    if (bytes.byteLength < capacity * IOVEC_SIZE) {
      throw new RangeError("iovec memory smaller than its capacity");
    }
    this.addr = addr;
    this.bytes = bytes;
    this.capacity = capacity;
    this.#words = new Uint32Array(bytes.buffer, bytes.byteOffset, capacity * 4);
  }

  #emit(addr: number, len: number): void {
    const w = this.#words;
    const i = this.count++ << 2;
    w[i] = addr >>> 0;
    w[i + 1] = (addr / TWO_32) >>> 0;
    w[i + 2] = len;
    w[i + 3] = 0;
  }

  /**
   * Describes `bytes` bytes of `qiov` at `qiovOffset`. With `direct`, unaligned segments are
   * bounced through `pool` (copied in now for a write; copied out by {@link finishRead} for a
   * read). Returns the iovec count.
   */
  fill(
    qiov: IoVector,
    qiovOffset: number,
    bytes: number,
    direct: boolean,
    write: boolean,
    pool: BufferPool,
  ): number {
    this.count = 0;
    this.#nCopies = 0;
    const iov = qiov.iov;
    let i = 0;
    let off = qiovOffset;
    for (; i < iov.length && off >= iov[i]!.length; i++) off -= iov[i]!.length;
    let left = bytes;
    let reqOff = 0;
    let runStart = 0;
    let runLen = 0;
    let bpos = 0;
    while (left > 0 && i < iov.length) {
      const seg = iov[i++]!;
      const n = Math.min(seg.length - off, left);
      if (n <= 0) {
        off = 0;
        continue;
      }
      if (this.count === this.capacity) {
        return this.#bounceAll(qiov, qiovOffset, bytes, write, pool);
      }
      const addr = viewAddress(seg) + off;
      if (runLen === 0 && (!direct || ((addr & MASK) === 0 && (n & MASK) === 0))) {
        this.#emit(addr, n);
      } else {
        const b = this.bounce ??= pool.get(bytes);
        if (write) b.bytes.set(seg.subarray(off, off + n), bpos);
        else this.#record(reqOff, bpos, n);
        if (runLen === 0) runStart = bpos;
        bpos += n;
        runLen += n;
        if ((runLen & MASK) === 0) {
          this.#emit(b.addr + runStart, runLen);
          runLen = 0;
        }
      }
      reqOff += n;
      left -= n;
      off = 0;
    }
    if (left > 0) throw new RangeError("I/O vector shorter than the request");
    if (runLen > 0) {
      if (this.count === this.capacity) {
        return this.#bounceAll(qiov, qiovOffset, bytes, write, pool);
      }
      this.#emit(this.bounce!.addr + runStart, runLen);
    }
    return this.count;
  }

  /** Too many segments for the array: the whole request goes through one bounce buffer. */
  #bounceAll(
    qiov: IoVector,
    qiovOffset: number,
    bytes: number,
    write: boolean,
    pool: BufferPool,
  ): number {
    this.count = 0;
    this.#nCopies = 0;
    const b = this.bounce ??= pool.get(bytes);
    if (write) qiov.copyTo(qiovOffset, b.bytes, 0, bytes);
    else this.#record(0, 0, bytes);
    this.#emit(b.addr, bytes);
    return 1;
  }

  #record(reqOff: number, bpos: number, n: number): void {
    const c = this.#copies;
    const k = this.#nCopies++ * 3;
    c[k] = reqOff;
    c[k + 1] = bpos;
    c[k + 2] = n;
  }

  /** Copies the first `done` bytes of a bounced read into the caller's vector. */
  finishRead(qiov: IoVector, qiovOffset: number, done: number): void {
    const b = this.bounce;
    if (!b) return;
    const c = this.#copies;
    for (let k = 0; k < this.#nCopies * 3; k += 3) {
      const reqOff = c[k]!;
      if (reqOff >= done) break;
      const n = Math.min(c[k + 2]!, done - reqOff);
      qiov.copyFrom(qiovOffset + reqOff, b.bytes, c[k + 1]!, n);
    }
  }

  /** Gives the bounce buffer back to `pool`; the array is ready for the next request. */
  release(pool: BufferPool): void {
    if (this.bounce) {
      pool.put(this.bounce);
      this.bounce = null;
    }
    this.#nCopies = 0;
    this.count = 0;
  }
}
