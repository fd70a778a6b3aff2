/**
 * Buffers for callers that do their own I/O through nodes (benchmarks, `img convert`, jobs):
 * native memory aligned for direct I/O, in transparent huge pages from 2 MiB up (see
 * `ioAlloc` in `libc.ts` for what that saves), so that `cache.direct=on` nodes take it as it
 * is instead of bouncing it. Without FFI it falls back to an ordinary (unaligned) buffer,
 * which direct I/O then bounces.
 *
 * @module
 */

import { addressOf, alignedFree, ioAlloc } from "./libc.ts";

/** Memory from {@link allocateIoMemory}. */
export interface IoMemory {
  /** The usable bytes (exactly as many as asked for). */
  readonly bytes: Uint8Array;
  /** The address of `bytes[0]` (0 when it is ordinary memory). */
  readonly address: number;
  /** Frees native memory; `bytes` must not be touched afterwards. Idempotent. */
  release(): void;
}

/**
 * `bytes` bytes of I/O memory aligned to `align` (a power of two, default 4096). Its contents
 * are undefined: it comes from `malloc`, which hands out freed chunks again as they were.
 *
 * @example
 * ```ts
 * import { allocateIoMemory } from "@blockgraph/drivers";
 * const m = allocateIoMemory(8192);
 * console.assert(m.bytes.length === 8192);
 * m.release();
 * ```
 */
export function allocateIoMemory(bytes: number, align: number = 4096): IoMemory {
  if (!Number.isInteger(bytes) || bytes < 0) {
    throw new RangeError(`I/O memory size must be a non-negative integer, not ${bytes}`);
  }
  let native: { ptr: Deno.PointerObject; size: number };
  try {
    native = ioAlloc(Math.max(bytes, 1), align);
  } catch {
    return { bytes: new Uint8Array(bytes), address: 0, release: () => {} };
  }
  const view = new Uint8Array(Deno.UnsafePointerView.getArrayBuffer(native.ptr, native.size));
  let freed = false;
  return {
    bytes: view.subarray(0, bytes),
    address: addressOf(native.ptr),
    release() {
      if (freed) return;
      freed = true;
      alignedFree(native.ptr);
    },
  };
}
