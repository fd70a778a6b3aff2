/**
 * What the metadata structures (L2 cache, refcounts) need from the image: reads and
 * overlap-checked writes of the image file, flushes, and the corruption signal.
 *
 * @module
 */

import type { WriteKind } from "./overlap.ts";

/** Metadata I/O on the image file. */
export interface MetaIo {
  /** Reads `buf.length` bytes at `offset` of the image file. */
  read(offset: number, buf: Uint8Array): Promise<void>;
  /** Writes `buf` at `offset` after the overlap check for `kind` (corruption on a hit). */
  write(kind: WriteKind, offset: number, buf: Uint8Array): Promise<void>;
  /** Flushes the image file. */
  flush(): Promise<void>;
  /** Marks the image corrupt (when writable) and returns the EIO error to throw. */
  corrupt(message: string, offset?: number, size?: number): Error;
}
