/**
 * The in-memory model the conformance suite checks drivers against: a plain byte array that
 * grows and shrinks like a disk, where everything never written reads as zeros.
 *
 * @module
 */

/** A disk as a flat byte array, the reference every driver's answers are compared with. */
export class DiskModel {
  #bytes: Uint8Array;
  #length: number;

  /** A disk of `length` zero bytes. */
  constructor(length: number) {
    this.#bytes = new Uint8Array(length);
    this.#length = length;
  }

  /** The size in bytes. */
  get length(): number {
    return this.#length;
  }

  #reserve(end: number): void {
    if (end <= this.#bytes.length) return;
    const grown = new Uint8Array(Math.max(end, this.#bytes.length * 2));
    grown.set(this.#bytes.subarray(0, this.#length));
    this.#bytes = grown;
  }

  /** Stores `data` at `offset`, growing the disk when it reaches past the end. */
  write(offset: number, data: Uint8Array): void {
    const end = offset + data.length;
    this.#reserve(end);
    this.#bytes.set(data, offset);
    if (end > this.#length) this.#length = end;
  }

  /** Zeros `bytes` bytes at `offset`, growing the disk when the range reaches past the end. */
  zero(offset: number, bytes: number): void {
    const end = offset + bytes;
    this.#reserve(end);
    this.#bytes.fill(0, offset, end);
    if (end > this.#length) this.#length = end;
  }

  /** Changes the size; bytes cut off by a shrink read as zeros after growing again. */
  truncate(size: number): void {
    if (size < this.#length) {
      this.#bytes.fill(0, size, this.#length);
    } else {
      this.#reserve(size);
    }
    this.#length = size;
  }

  /** A copy of `bytes` bytes at `offset`; what lies past the end reads as zeros. */
  read(offset: number, bytes: number): Uint8Array {
    const out = new Uint8Array(bytes);
    const end = Math.min(offset + bytes, this.#length);
    if (end > offset) out.set(this.#bytes.subarray(offset, end));
    return out;
  }

  /** Whether `bytes` bytes at `offset` read as zeros. */
  isZero(offset: number, bytes: number): boolean {
    const end = Math.min(offset + bytes, this.#length);
    for (let i = offset; i < end; i++) if (this.#bytes[i] !== 0) return false;
    return true;
  }
}
