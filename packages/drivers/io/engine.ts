/**
 * I/O engines: how the `file` protocol reaches the kernel. One interface, three engines
 * (`io_uring` rings driven from TypeScript, `native` libaio, and `threads`, Deno's own async
 * file APIs), and one factory that decides which engine a node gets. Nothing else branches
 * on the engine.
 *
 * @module
 */

import type { IoVector } from "@blockgraph/core";
import type { HostFiles } from "./posix_file.ts";

/** The engine names, as the `aio=` option spells them. */
export type EngineName = "io_uring" | "native" | "threads";

/** `fallocate(2)` mode bits. */
export const FALLOC = {
  /** Do not change the file size. */
  KEEP_SIZE: 0x01,
  /** Deallocate the range (needs KEEP_SIZE). */
  PUNCH_HOLE: 0x02,
  /** Make the range read as zeros, allocating it. */
  ZERO_RANGE: 0x10,
} as const;

/** `sync_file_range(2)` flag: start writeback of the range's dirty pages, without waiting. */
export const SYNC_FILE_RANGE_WRITE = 2;

/**
 * One engine instance, shared by the file nodes that use it. Every method is asynchronous
 * and must not block the event loop; errors are `BlockError`s with the kernel's errno code
 * and the request's offset, and an engine keeps working after a failed request.
 *
 * Buffers named by a request must stay untouched until its promise settles; the engine
 * keeps them referenced until the kernel is done with them.
 */
export interface IoEngine {
  /** Which engine this is. */
  readonly name: EngineName;
  /**
   * Reads `bytes` bytes at `offset` of `fd` into `qiov` at `qiovOffset`. Resolves with the
   * number of bytes read, which is short only at the end of the file; the rest of the
   * `bytes` in `qiov` then reads as zeros, so a caller has nothing left to do.
   */
  preadv(
    fd: number,
    offset: number,
    qiov: IoVector,
    qiovOffset: number,
    bytes: number,
  ): Promise<number>;
  /**
   * Writes `bytes` bytes from `qiov` at `qiovOffset` to `fd` at `offset`; with `fua` the data
   * is on stable storage when the promise resolves (RWF_DSYNC). Resolves with the bytes
   * written (the caller retries a short write).
   */
  pwritev(
    fd: number,
    offset: number,
    qiov: IoVector,
    qiovOffset: number,
    bytes: number,
    fua: boolean,
  ): Promise<number>;
  /** `fdatasync` (or `fsync` when `datasync` is false). */
  fsync(fd: number, datasync: boolean): Promise<void>;
  /** `fallocate(fd, mode, offset, length)`; ENOTSUP when the file system cannot. */
  fallocate(fd: number, mode: number, offset: number, length: number): Promise<void>;
  /**
   * Starts writeback of the dirty page-cache pages of `length` bytes at `offset`
   * (`sync_file_range(SYNC_FILE_RANGE_WRITE)`) without waiting for it: a hint, which resolves
   * once the kernel has taken it and never rejects. Errors of the writeback itself are the
   * next `fsync`'s to report, as they would be without the hint. An engine without the call
   * (`threads`: `node:fs` has none) resolves at once.
   */
  startWriteback(fd: number, offset: number, length: number): Promise<void>;
  /**
   * Completes or cancels every request in flight on `fd` (cancelled ones reject with
   * ECANCELED) and resolves when none is left: called before the descriptor is closed.
   */
  drainFd(fd: number): Promise<void>;
  /** Drops one user of the engine; the last one frees it (rings, threads, memory). */
  release(): Promise<void>;
  /**
   * The host-file calls whose descriptors this engine accepts: the `file` driver opens,
   * stats, truncates and closes its files through them.
   */
  files(): Promise<HostFiles>;
}

/** What an engine factory needs to know about the file it serves. */
export interface EngineOptions {
  /** The file is opened with O_DIRECT: buffers and offsets must be aligned. */
  direct: boolean;
}

/** The result of choosing an engine: which one, and why others were passed over. */
export interface EngineChoice {
  /** The engine the node uses. */
  engine: IoEngine;
  /** Engines tried first that could not start, with the reason (shown to the user once). */
  skipped: { name: EngineName; reason: string }[];
}
