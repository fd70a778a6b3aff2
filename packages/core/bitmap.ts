/**
 * Hierarchical bitmaps (QEMU's HBitmap): one bit per `granularity` bytes of a byte range,
 * kept in levels of 32-bit words. Level 0 holds the bits; each bit of level k+1 says
 * whether the matching word of level k is non-zero; the top level is one word. Finding the
 * next dirty bit walks up and down the levels instead of scanning, so every operation costs
 * O(levels) plus O(range / granularity / 32) for the range it touches, never O(size).
 *
 * @example
 * ```ts
 * import { HBitmap } from "./bitmap.ts";
 * const hb = new HBitmap(1 << 30, 65536);
 * hb.set(100_000, 10);
 * console.assert(hb.count === 65536 && hb.nextDirty(0) === 65536);
 * ```
 *
 * @module
 */

/** Most bits a bitmap may hold: bit indices stay within unsigned 32-bit arithmetic. */
const MAX_BITS = 2 ** 31;

/** An extent of a bitmap: `bytes` bytes from `offset`. */
export interface BitmapArea {
  /** First byte of the extent. */
  offset: number;
  /** Length in bytes. */
  bytes: number;
}

function popcount(x: number): number {
  x = x - ((x >>> 1) & 0x55555555);
  x = (x & 0x33333333) + ((x >>> 2) & 0x33333333);
  return Math.imul((x + (x >>> 4)) & 0x0f0f0f0f, 0x01010101) >>> 24;
}

function ctz(x: number): number {
  return 31 - Math.clz32(x & -x);
}

/** The mask of bits `lo..hi` (inclusive) of a word. */
function mask(lo: number, hi: number): number {
  return hi - lo === 31 ? -1 : ((1 << (hi - lo + 1)) - 1) << lo;
}

/**
 * A hierarchical bitmap over `size` bytes at `granularity` bytes per bit. Byte ranges are
 * rounded out to whole bits when set, so {@link HBitmap.count} is a multiple of the
 * granularity and may pass `size` when the last bit covers a partial chunk (as QEMU's).
 */
export class HBitmap {
  /** Bytes per bit, a power of two. */
  readonly granularity: number;
  #size: number;
  #bits: number;
  #count = 0;
  /** `#levels[0]` holds the bits; the last level is one word. */
  #levels: Int32Array[] = [];

  /** Creates an empty bitmap; `granularity` must be a power of two. */
  constructor(size: number, granularity: number) {
    if (!Number.isInteger(granularity) || granularity < 1 || granularity > 2 ** 31) {
      throw new RangeError(`Invalid bitmap granularity: ${granularity}`);
    }
    if ((granularity & (granularity - 1)) !== 0) {
      throw new RangeError(`Bitmap granularity must be a power of two: ${granularity}`);
    }
    this.granularity = granularity;
    this.#size = 0;
    this.#bits = 0;
    this.#resize(size);
  }

  /** The size in bytes the bitmap covers. */
  get size(): number {
    return this.#size;
  }

  /** Dirty bytes: set bits times the granularity. */
  get count(): number {
    return this.#count * this.granularity;
  }

  /** Set bits. */
  get dirtyBits(): number {
    return this.#count;
  }

  /** Whether no bit is set. */
  get isEmpty(): boolean {
    return this.#count === 0;
  }

  /** Whether the byte at `offset` is dirty. */
  get(offset: number): boolean {
    if (!(offset >= 0 && offset < this.#size)) return false;
    const bit = Math.floor(offset / this.granularity);
    return (this.#levels[0]![bit >>> 5]! & (1 << (bit & 31))) !== 0;
  }

  #checkRange(offset: number, bytes: number, op: string): void {
    if (
      !Number.isSafeInteger(offset) || !Number.isSafeInteger(bytes) || offset < 0 || bytes < 0 ||
      offset + bytes > this.#size
    ) {
      throw new RangeError(
        `Bitmap ${op} out of range: offset ${offset}, ${bytes} bytes, size ${this.#size}`,
      );
    }
  }

  /** Marks `bytes` bytes at `offset` dirty, rounded out to whole bits. */
  set(offset: number, bytes: number): void {
    this.#checkRange(offset, bytes, "set");
    if (bytes === 0) return;
    const g = this.granularity;
    this.#count += this.#setBits(0, Math.floor(offset / g), Math.floor((offset + bytes - 1) / g));
  }

  /**
   * Clears `bytes` bytes at `offset`. The range must start on a bit boundary and end on one
   * or at the end of the bitmap: clearing part of a chunk would lose the rest of it.
   */
  reset(offset: number, bytes: number): void {
    this.#checkRange(offset, bytes, "reset");
    const g = this.granularity;
    if (offset % g !== 0 || (bytes % g !== 0 && offset + bytes !== this.#size)) {
      throw new RangeError(
        `Bitmap reset of ${bytes} bytes at ${offset} is not aligned to the granularity ${g}`,
      );
    }
    if (bytes === 0) return;
    this.#count -= this.#resetBits(0, offset / g, Math.ceil((offset + bytes) / g) - 1);
  }

  /** Clears every bit. */
  resetAll(): void {
    for (const l of this.#levels) l.fill(0);
    this.#count = 0;
  }

  /** Sets bits `a..b` of level `k`; returns how many were newly set. */
  #setBits(k: number, a: number, b: number): number {
    const arr = this.#levels[k]!;
    const w0 = a >>> 5;
    const w1 = b >>> 5;
    let added = 0;
    let woke = false;
    for (let w = w0; w <= w1; w++) {
      const old = arr[w]!;
      const v = old | mask(w === w0 ? a & 31 : 0, w === w1 ? b & 31 : 31);
      if (v !== old) {
        arr[w] = v;
        added += popcount(v ^ old);
        if (old === 0) woke = true;
      }
    }
    // Only words that went from zero to non-zero change the level above.
    if (woke && k + 1 < this.#levels.length) this.#setBits(k + 1, w0, w1);
    return added;
  }

  /** Clears bits `a..b` of level `k`; returns how many were set before. */
  #resetBits(k: number, a: number, b: number): number {
    const arr = this.#levels[k]!;
    const w0 = a >>> 5;
    const w1 = b >>> 5;
    let removed = 0;
    for (let w = w0; w <= w1; w++) {
      const old = arr[w]!;
      if (old === 0) continue;
      const v = old & ~mask(w === w0 ? a & 31 : 0, w === w1 ? b & 31 : 31);
      arr[w] = v;
      removed += popcount(old ^ v);
    }
    if (k + 1 < this.#levels.length) {
      // Inner words are now zero; the edge words may not be.
      const pa = arr[w0] === 0 ? w0 : w0 + 1;
      const pb = arr[w1] === 0 ? w1 : w1 - 1;
      if (pa <= pb) this.#resetBits(k + 1, pa, pb);
    }
    return removed;
  }

  /** The first set bit of level `k` at or after `bit`, or -1. */
  #findSet(k: number, bit: number): number {
    const arr = this.#levels[k]!;
    if (bit >= arr.length * 32) return -1;
    const w = bit >>> 5;
    const word = arr[w]! & (-1 << (bit & 31));
    if (word !== 0) return w * 32 + ctz(word);
    if (k + 1 >= this.#levels.length) return -1;
    const nw = this.#findSet(k + 1, w + 1);
    return nw < 0 ? -1 : nw * 32 + ctz(arr[nw]!);
  }

  /**
   * The first dirty byte in `[offset, offset + bytes)`, or -1. Dirty chunks that start
   * before `offset` count from `offset`.
   */
  nextDirty(offset: number, bytes: number = Infinity): number {
    const end = Math.min(this.#size, offset + bytes);
    if (!(offset >= 0) || offset >= end) return -1;
    const bit = this.#findSet(0, Math.floor(offset / this.granularity));
    if (bit < 0) return -1;
    const pos = Math.max(offset, bit * this.granularity);
    return pos < end ? pos : -1;
  }

  /** The first clean byte in `[offset, offset + bytes)`, or -1: a linear scan of words. */
  nextZero(offset: number, bytes: number = Infinity): number {
    const end = Math.min(this.#size, offset + bytes);
    if (!(offset >= 0) || offset >= end) return -1;
    const g = this.granularity;
    const arr = this.#levels[0]!;
    const lastBit = Math.ceil(end / g) - 1;
    let bit = Math.floor(offset / g);
    for (let w = bit >>> 5; w <= lastBit >>> 5; w++) {
      const word = ~arr[w]! & (w === bit >>> 5 ? -1 << (bit & 31) : -1);
      if (word !== 0) {
        bit = w * 32 + ctz(word);
        if (bit > lastBit) return -1;
        return Math.max(offset, bit * g);
      }
    }
    return -1;
  }

  /**
   * The first run of dirty bytes in `[offset, offset + bytes)`, at most `maxBytes` long and
   * clipped to the range, or null when the range is clean.
   */
  nextDirtyArea(
    offset: number,
    bytes: number = Infinity,
    maxBytes: number = Infinity,
  ): BitmapArea | null {
    const end = Math.min(this.#size, offset + bytes);
    const start = this.nextDirty(offset, end - offset);
    if (start < 0) return null;
    const limit = Math.min(end, start + maxBytes);
    const zero = this.nextZero(start, limit - start);
    return { offset: start, bytes: (zero < 0 ? limit : zero) - start };
  }

  /** The dirty runs in `[offset, offset + bytes)`, in order; O(runs) to walk. */
  *areas(offset = 0, bytes: number = Infinity): Generator<BitmapArea> {
    const end = Math.min(this.#size, offset + bytes);
    for (let pos = offset; pos < end;) {
      const a = this.nextDirtyArea(pos, end - pos);
      if (!a) return;
      yield a;
      pos = a.offset + a.bytes;
    }
  }

  /** The next non-zero word of level 0 at or after word `w`, or -1. */
  #nextWord(w: number): number {
    if (this.#levels.length === 1) return w === 0 && this.#levels[0]![0] !== 0 ? 0 : -1;
    return this.#findSet(1, w);
  }

  /** Whether {@link HBitmap.merge} accepts `src`: both cover the same size. */
  canMerge(src: HBitmap): boolean {
    return src.#size === this.#size;
  }

  /**
   * ORs `src` into this bitmap. Same granularity: O(non-zero words of `src`); otherwise
   * each dirty run of `src` is set here, rounded out to this bitmap's granularity.
   */
  merge(src: HBitmap): void {
    if (!this.canMerge(src)) {
      throw new RangeError(`Cannot merge a bitmap of ${src.#size} bytes into one of ${this.#size}`);
    }
    if (src === this) return;
    if (src.granularity !== this.granularity) {
      for (const a of src.areas()) this.set(a.offset, a.bytes);
      return;
    }
    const dst = this.#levels[0]!;
    const from = src.#levels[0]!;
    for (let w = src.#nextWord(0); w >= 0; w = src.#nextWord(w + 1)) {
      const old = dst[w]!;
      const v = old | from[w]!;
      if (v === old) continue;
      dst[w] = v;
      this.#count += popcount(v ^ old);
      if (old === 0 && this.#levels.length > 1) this.#setBits(1, w, w);
    }
  }

  /** An independent copy. */
  copy(): HBitmap {
    const c = new HBitmap(0, this.granularity);
    c.#size = this.#size;
    c.#bits = this.#bits;
    c.#count = this.#count;
    c.#levels = this.#levels.map((l) => l.slice());
    return c;
  }

  /** Serialised ranges must start on a multiple of this many bytes (32 bits). */
  get serializationAlign(): number {
    return this.granularity * 32;
  }

  /** Bytes {@link HBitmap.serialize} produces for the range: one bit per chunk. */
  serializationSize(offset: number, bytes: number): number {
    const g = this.granularity;
    return Math.ceil((Math.ceil((offset + bytes) / g) - offset / g) / 8);
  }

  #checkSerial(offset: number, bytes: number, op: string): void {
    this.#checkRange(offset, bytes, op);
    const align = this.serializationAlign;
    if (offset % align !== 0 || (bytes % align !== 0 && offset + bytes !== this.#size)) {
      throw new RangeError(
        `Bitmap ${op} of ${bytes} bytes at ${offset} is not aligned to ${align} bytes`,
      );
    }
  }

  /**
   * The bits of `[offset, offset + bytes)` as bytes, least significant bit first (the
   * qcow2 bitmap data layout). `offset` must be a multiple of
   * {@link HBitmap.serializationAlign}; `bytes` too, unless the range ends the bitmap.
   */
  serialize(offset: number, bytes: number): Uint8Array {
    this.#checkSerial(offset, bytes, "serialize");
    const out = new Uint8Array(this.serializationSize(offset, bytes));
    const arr = this.#levels[0]!;
    const w0 = offset / this.granularity / 32;
    for (let i = 0; i < out.length; i++) {
      out[i] = (arr[w0 + (i >>> 2)]! >>> ((i & 3) * 8)) & 0xff;
    }
    return out;
  }

  /**
   * Overwrites the bits of `[offset, offset + bytes)` with `buf` in the layout
   * {@link HBitmap.serialize} writes; bits past the end of the bitmap are ignored.
   */
  deserialize(buf: Uint8Array, offset: number, bytes: number): void {
    this.#checkSerial(offset, bytes, "deserialize");
    const n = this.serializationSize(offset, bytes);
    if (buf.length < n) {
      throw new RangeError(`Bitmap data of ${buf.length} bytes is short of ${n}`);
    }
    const arr = this.#levels[0]!;
    const w0 = offset / this.granularity / 32;
    const words = Math.ceil(n / 4);
    for (let i = 0; i < words; i++) {
      const w = w0 + i;
      let v = 0;
      for (let j = 0; j < 4 && i * 4 + j < n; j++) v |= buf[i * 4 + j]! << (j * 8);
      if (w * 32 + 32 > this.#bits) v &= mask(0, Math.max(0, this.#bits - w * 32 - 1));
      if (w * 32 >= this.#bits) v = 0;
      const old = arr[w]!;
      if (v === old) continue;
      arr[w] = v;
      this.#count += popcount(v) - popcount(old);
      if (this.#levels.length > 1) {
        if (v === 0) this.#resetBits(1, w, w);
        else if (old === 0) this.#setBits(1, w, w);
      }
    }
  }

  /**
   * Resizes to `size` bytes: growing adds clean bits, shrinking drops the bits past the new
   * end. Reallocates the words, O(size / granularity / 32).
   */
  truncate(size: number): void {
    this.#resize(size);
  }

  #resize(size: number): void {
    if (!Number.isSafeInteger(size) || size < 0) {
      throw new RangeError(`Invalid bitmap size: ${size}`);
    }
    const bits = Math.ceil(size / this.granularity);
    if (bits > MAX_BITS) {
      throw new RangeError(
        `A bitmap of ${size} bytes at granularity ${this.granularity} needs more than 2^31 bits`,
      );
    }
    const old = this.#levels[0];
    if (old && bits < this.#bits) {
      // Drop the bits past the new end, keeping the count right.
      this.#count -= this.#resetBits(0, bits, this.#bits - 1);
    }
    const levels: Int32Array[] = [];
    let n = bits;
    do {
      const words = Math.max(1, Math.ceil(n / 32));
      levels.push(new Int32Array(words));
      n = words;
    } while (n > 1);
    if (old) {
      const keep = Math.min(old.length, levels[0]!.length);
      levels[0]!.set(old.subarray(0, keep));
      for (let k = 1; k < levels.length; k++) {
        const below = levels[k - 1]!;
        const arr = levels[k]!;
        for (let w = this.#nextNonZero(below, 0); w >= 0; w = this.#nextNonZero(below, w + 1)) {
          arr[w >>> 5] = arr[w >>> 5]! | (1 << (w & 31));
        }
      }
    }
    this.#levels = levels;
    this.#size = size;
    this.#bits = bits;
  }

  /** Scans `arr` for a non-zero word from `w` (used only while rebuilding on resize). */
  #nextNonZero(arr: Int32Array, w: number): number {
    for (; w < arr.length; w++) if (arr[w] !== 0) return w;
    return -1;
  }
}
