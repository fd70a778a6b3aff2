/**
 * Scatter-gather buffers for requests, like QEMU's QEMUIOVector.
 *
 * A request names its data as a byte range of an {@link IoVector}: `(qiov, qiovOffset)`, so a
 * layer that splits or forwards a request passes the same vector on with another offset and
 * allocates nothing.
 *
 * @module
 */

const ZERO_CHUNK = new Uint8Array(64 * 1024);

/** An ordered list of buffers that together hold a request's data. */
export class IoVector {
  /** The segments, in order. */
  readonly iov: Uint8Array[];
  /** The sum of the segments' lengths. */
  size: number;

  /** Creates a vector over `buffers` (the buffers are shared, not copied). */
  constructor(buffers: Uint8Array[] = []) {
    this.iov = buffers;
    let size = 0;
    for (const b of buffers) size += b.length;
    this.size = size;
  }

  /** A vector with one segment. */
  static of(buffer: Uint8Array): IoVector {
    return new IoVector([buffer]);
  }

  /** Appends a segment. */
  add(buffer: Uint8Array): void {
    this.iov.push(buffer);
    this.size += buffer.length;
  }

  /** Empties the vector so it can be reused without allocating. */
  reset(): void {
    this.iov.length = 0;
    this.size = 0;
  }

  /**
   * Returns the range as one buffer when it lies inside a single segment (a view, no copy),
   * or `null` when it spans segments.
   */
  contiguous(offset: number, length: number): Uint8Array | null {
    const iov = this.iov;
    for (let i = 0; i < iov.length; i++) {
      const seg = iov[i]!;
      if (offset < seg.length) {
        if (offset + length > seg.length) return null;
        return offset === 0 && length === seg.length ? seg : seg.subarray(offset, offset + length);
      }
      offset -= seg.length;
    }
    return length === 0 ? new Uint8Array(0) : null;
  }

  /** Copies `length` bytes at `offset` of the vector into `dst` at `dstOffset`. */
  copyTo(offset: number, dst: Uint8Array, dstOffset: number, length: number): void {
    const iov = this.iov;
    let i = 0;
    for (; i < iov.length && offset >= iov[i]!.length; i++) offset -= iov[i]!.length;
    while (length > 0 && i < iov.length) {
      const seg = iov[i++]!;
      const n = Math.min(seg.length - offset, length);
      dst.set(seg.subarray(offset, offset + n), dstOffset);
      dstOffset += n;
      length -= n;
      offset = 0;
    }
    if (length > 0) throw new RangeError("IoVector.copyTo past the end of the vector");
  }

  /** Copies `length` bytes of `src` at `srcOffset` into the vector at `offset`. */
  copyFrom(offset: number, src: Uint8Array, srcOffset: number, length: number): void {
    const iov = this.iov;
    let i = 0;
    for (; i < iov.length && offset >= iov[i]!.length; i++) offset -= iov[i]!.length;
    while (length > 0 && i < iov.length) {
      const seg = iov[i++]!;
      const n = Math.min(seg.length - offset, length);
      seg.set(src.subarray(srcOffset, srcOffset + n), offset);
      srcOffset += n;
      length -= n;
      offset = 0;
    }
    if (length > 0) throw new RangeError("IoVector.copyFrom past the end of the vector");
  }

  /** Fills `length` bytes at `offset` with `value`. */
  fill(offset: number, length: number, value = 0): void {
    const iov = this.iov;
    let i = 0;
    for (; i < iov.length && offset >= iov[i]!.length; i++) offset -= iov[i]!.length;
    while (length > 0 && i < iov.length) {
      const seg = iov[i++]!;
      const n = Math.min(seg.length - offset, length);
      seg.fill(value, offset, offset + n);
      length -= n;
      offset = 0;
    }
  }

  /** Whether every byte of the range is zero. */
  isZero(offset: number, length: number): boolean {
    const iov = this.iov;
    let i = 0;
    for (; i < iov.length && offset >= iov[i]!.length; i++) offset -= iov[i]!.length;
    while (length > 0 && i < iov.length) {
      const seg = iov[i++]!;
      const n = Math.min(seg.length - offset, length);
      if (!isZeroBuffer(seg, offset, n)) return false;
      length -= n;
      offset = 0;
    }
    return true;
  }

  /** The segments covering the range, as views (allocates; for engines that need iovecs). */
  slices(offset: number, length: number, out: Uint8Array[] = []): Uint8Array[] {
    const iov = this.iov;
    let i = 0;
    for (; i < iov.length && offset >= iov[i]!.length; i++) offset -= iov[i]!.length;
    while (length > 0 && i < iov.length) {
      const seg = iov[i++]!;
      const n = Math.min(seg.length - offset, length);
      out.push(offset === 0 && n === seg.length ? seg : seg.subarray(offset, offset + n));
      length -= n;
      offset = 0;
    }
    return out;
  }

  /** Copies the range into a new buffer. */
  toBuffer(offset: number = 0, length: number = this.size - offset): Uint8Array {
    const out = new Uint8Array(length);
    this.copyTo(offset, out, 0, length);
    return out;
  }
}

/** A word view over the whole of each buffer {@link isZeroBuffer} has scanned. */
const wordViews = new WeakMap<ArrayBufferLike, Uint32Array>();
function wordsOf(buffer: ArrayBufferLike): Uint32Array {
  let w = wordViews.get(buffer);
  if (w === undefined || w.length !== buffer.byteLength >>> 2) {
    w = new Uint32Array(buffer, 0, buffer.byteLength >>> 2);
    wordViews.set(buffer, w);
  }
  return w;
}

/**
 * Whether `length` bytes of `buf` at `offset` are all zero, four bytes at a time. Allocates
 * nothing per call (one word view per buffer, kept while the buffer lives), so a caller may
 * scan a large buffer block by block: `img convert` asks once per 4 KiB.
 */
export function isZeroBuffer(
  buf: Uint8Array,
  offset: number = 0,
  length: number = buf.length - offset,
): boolean {
  let i = offset;
  const end = offset + length;
  while (i < end && ((buf.byteOffset + i) & 3) !== 0) {
    if (buf[i++] !== 0) return false;
  }
  const words = (end - i) >>> 2;
  if (words > 0) {
    const w = wordsOf(buf.buffer);
    const first = (buf.byteOffset + i) >>> 2;
    for (let k = first, last = first + words; k < last; k++) if (w[k] !== 0) return false;
    i += words << 2;
  }
  while (i < end) if (buf[i++] !== 0) return false;
  return true;
}

/** From this many bytes on, {@link sameBytesAt} compares natively. */
const NATIVE_COMPARE = 2048;

/** `node:buffer`'s Buffer once loaded, for its native compare. */
type NodeBuffer = typeof import("node:buffer").Buffer;
let nativeBuffer: NodeBuffer | null = null;
let nativeLoading: Promise<void> | null = null;

/**
 * Loads what {@link sameBytesAt} compares long ranges with (`node:buffer`), once; resolves
 * when it is there (or could not be loaded: the word loop then stays). Until then long
 * compares run in the word loop. A caller about to compare much (`img compare`) may await it
 * first; the first long compare starts it otherwise. `node:buffer` is not imported with this
 * module because importing it costs about 4.5 ms (it pulls in much of Deno's Node layer),
 * which every command paid at start-up, `img info` included.
 */
export function nativeCompareReady(): Promise<void> {
  return nativeLoading ??= import("node:buffer").then((m) => {
    nativeBuffer = m.Buffer;
  }, () => {});
}

/**
 * Whether `length` bytes of `a` from `aOffset` equal those of `b` from `bOffset`, without
 * allocating views. Long ranges are compared natively (`memcmp`, through `node:buffer`: about
 * 40 GB/s on cached 2 MiB buffers, where a loop over 32-bit words makes 7 GB/s and one over
 * bytes 1.8 GB/s); short ones, where the native call's cost would dominate, in a loop over
 * words when both sides are 4-byte aligned, else over bytes. `node:buffer` is imported at the
 * first long compare, which with those before the import completes (the next turn of the
 * event loop) runs in the word loop.
 */
export function sameBytesAt(
  a: Uint8Array,
  aOffset: number,
  b: Uint8Array,
  bOffset: number,
  length: number,
): boolean {
  const i = a.byteOffset + aOffset;
  const j = b.byteOffset + bOffset;
  if (length >= NATIVE_COMPARE) {
    const native = nativeBuffer;
    if (native !== null) {
      return native.from(a.buffer, i, length).equals(native.from(b.buffer, j, length));
    }
    void nativeCompareReady();
  }
  if (((i | j | length) & 3) === 0) {
    const wa = wordsOf(a.buffer);
    const wb = wordsOf(b.buffer);
    for (let x = i >>> 2, y = j >>> 2, end = x + (length >>> 2); x < end; x++, y++) {
      if (wa[x] !== wb[y]) return false;
    }
    return true;
  }
  for (let k = 0; k < length; k++) if (a[aOffset + k] !== b[bOffset + k]) return false;
  return true;
}

/** Whether `a` and `b` hold the same bytes (and as many); see {@link sameBytesAt}. */
export function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && sameBytesAt(a, 0, b, 0, a.length);
}

/** A shared read-only block of zeros, for writing zeros without allocating. */
export function zeroChunk(): Uint8Array {
  return ZERO_CHUNK;
}
