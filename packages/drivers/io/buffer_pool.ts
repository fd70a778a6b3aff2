/**
 * Aligned native memory for O_DIRECT bounce buffers and kernel-shared structures, handed out
 * as `Uint8Array` views and reused: after warm-up, getting and returning a buffer allocates
 * nothing.
 *
 * @module
 */

import { addressOf, alignedFree, ioAlloc } from "./libc.ts";

/** Buffers above this size are freed when returned instead of kept for reuse. */
const MAX_KEPT = 4 * 1024 * 1024;

/** One aligned allocation: its bytes as a view, and its address for iovecs. */
export interface AlignedBuffer {
  /** The whole buffer (its length is the size class, at least what was asked for). */
  readonly bytes: Uint8Array;
  /** The address of `bytes[0]`. */
  readonly addr: number;
  /** The native pointer, for freeing. */
  readonly ptr: Deno.PointerObject;
}

/**
 * A pool of aligned native buffers in power-of-two size classes. Memory comes from
 * `posix_memalign`; views over it do not keep it alive, so nothing may touch a buffer after
 * {@link BufferPool.destroy}.
 */
export class BufferPool {
  /** The alignment of every buffer's address (and the smallest size class). */
  readonly align: number;
  #free = new Map<number, AlignedBuffer[]>();
  #all = new Set<AlignedBuffer>();
  #destroyed = false;

  /** Creates an empty pool whose buffers are aligned to `align` (a power of two). */
  constructor(align: number = 4096) {
    if (align <= 0 || (align & (align - 1)) !== 0) {
      throw new RangeError(`Buffer alignment must be a power of two, not ${align}`);
    }
    this.align = align;
  }

  /** The size class serving `size` bytes: the next power of two, at least the alignment. */
  sizeClass(size: number): number {
    let c = this.align;
    while (c < size) c *= 2;
    return c;
  }

  /** A buffer of at least `size` bytes, reused when one of its class is free. */
  get(size: number): AlignedBuffer {
    if (this.#destroyed) throw new Error("BufferPool used after destroy");
    const cls = this.sizeClass(size);
    const list = this.#free.get(cls);
    const reused = list?.pop();
    if (reused) return reused;
    const { ptr } = ioAlloc(cls, this.align);
    const bytes = new Uint8Array(Deno.UnsafePointerView.getArrayBuffer(ptr, cls));
    const buf: AlignedBuffer = { bytes, addr: addressOf(ptr), ptr };
    this.#all.add(buf);
    return buf;
  }

  /** Returns a buffer for reuse (large ones are freed at once). */
  put(buf: AlignedBuffer): void {
    if (this.#destroyed || !this.#all.has(buf)) return;
    const cls = buf.bytes.length;
    if (cls > MAX_KEPT) {
      this.#all.delete(buf);
      alignedFree(buf.ptr);
      return;
    }
    let list = this.#free.get(cls);
    if (!list) this.#free.set(cls, list = []);
    list.push(buf);
  }

  /** How many buffers the pool holds, in use or free. */
  get allocated(): number {
    return this.#all.size;
  }

  /** Frees every buffer the pool ever handed out. The pool cannot be used afterwards. */
  destroy(): void {
    if (this.#destroyed) return;
    this.#destroyed = true;
    for (const b of this.#all) alignedFree(b.ptr);
    this.#all.clear();
    this.#free.clear();
  }
}

/** Whether `view` may be handed to O_DIRECT I/O as is: address and length aligned. */
export function isAlignedView(addr: number, length: number, align: number): boolean {
  return (addr & (align - 1)) === 0 && (length & (align - 1)) === 0;
}
