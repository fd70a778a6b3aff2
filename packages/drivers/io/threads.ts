/**
 * The `threads` engine: `node:fs` positional vectored I/O, which Deno runs on its blocking
 * thread pool. The fallback where neither io_uring nor libaio can start. It needs no FFI for
 * buffered files; for O_DIRECT it copies every request through an aligned bounce buffer
 * (V8's buffers are not aligned), which needs FFI for the memory.
 *
 * Descriptors must come from `node:fs` (Deno's `node:fs` only accepts descriptors it opened):
 * open them with the engine's {@link IoEngine.files}. `node:fs` itself is imported then, or
 * at the first request, not when this module loads (see `posix_file.ts`).
 *
 * @module
 */

import { BlockError, type IoVector } from "@blockgraph/core";
import { BufferPool } from "./buffer_pool.ts";
import type { EngineOptions, IoEngine } from "./engine.ts";
import { type HostFiles, loadedNodeFs, loadNodeFs, nodeFiles, type NodeFs } from "./posix_file.ts";

function readvAt(fs: NodeFs, fd: number, bufs: Uint8Array[], position: number): Promise<number> {
  return new Promise((resolve, reject) => {
    fs.readv(fd, bufs, position, (err, n) => err ? reject(err) : resolve(n));
  });
}

function writevAt(fs: NodeFs, fd: number, bufs: Uint8Array[], position: number): Promise<number> {
  return new Promise((resolve, reject) => {
    fs.writev(fd, bufs, position, (err, n) => err ? reject(err) : resolve(n));
  });
}

/** One buffer with `read(2)`: Deno's `readv` does not pass external memory through as is. */
function readAt(fs: NodeFs, fd: number, buf: Uint8Array, position: number): Promise<number> {
  return new Promise((resolve, reject) => {
    fs.read(fd, buf, 0, buf.length, position, (err, n) => err ? reject(err) : resolve(n));
  });
}

function writeAt(fs: NodeFs, fd: number, buf: Uint8Array, position: number): Promise<number> {
  return new Promise((resolve, reject) => {
    fs.write(fd, buf, 0, buf.length, position, (err, n) => err ? reject(err) : resolve(n));
  });
}

function syncFd(fs: NodeFs, fd: number, datasync: boolean): Promise<void> {
  return new Promise((resolve, reject) => {
    const cb = (err: Error | null) => err ? reject(err) : resolve();
    if (datasync) fs.fdatasync(fd, cb);
    else fs.fsync(fd, cb);
  });
}

function ioError(err: unknown, op: string, offset: number): BlockError {
  const e = BlockError.from(err);
  return new BlockError(e.code, `${op} at offset ${offset}: ${e.message}`, {
    cause: err,
    offset,
    op,
  });
}

/** The thread-pool engine for one file node. */
class ThreadsEngine implements IoEngine {
  readonly name = "threads" as const;
  readonly #direct: boolean;
  #pool: BufferPool | null;
  /** Requests in flight per descriptor, for drainFd. */
  readonly #inflight = new Map<number, number>();
  readonly #drains: { fd: number; resolve: () => void }[] = [];

  constructor(direct: boolean) {
    this.#direct = direct;
    this.#pool = direct ? new BufferPool() : null;
    // Allocate once now, so a missing FFI shows at set-up rather than at the first request.
    this.#pool?.put(this.#pool.get(4096));
  }

  #begin(fd: number): void {
    this.#inflight.set(fd, (this.#inflight.get(fd) ?? 0) + 1);
  }

  #end(fd: number): void {
    const n = (this.#inflight.get(fd) ?? 1) - 1;
    if (n > 0) {
      this.#inflight.set(fd, n);
      return;
    }
    this.#inflight.delete(fd);
    for (let i = this.#drains.length - 1; i >= 0; i--) {
      const d = this.#drains[i]!;
      if (d.fd === fd) {
        this.#drains.splice(i, 1);
        d.resolve();
      }
    }
  }

  async preadv(
    fd: number,
    offset: number,
    qiov: IoVector,
    qiovOffset: number,
    bytes: number,
  ): Promise<number> {
    this.#begin(fd);
    const pool = this.#pool;
    const bounce = pool ? pool.get(bytes) : null;
    try {
      const fs = loadedNodeFs() ?? await loadNodeFs();
      let n: number;
      if (!bounce) {
        n = await readvAt(fs, fd, qiov.slices(qiovOffset, bytes), offset);
      } else {
        n = await readAt(fs, fd, bounce.bytes.subarray(0, bytes), offset);
        qiov.copyFrom(qiovOffset, bounce.bytes, 0, n);
      }
      // Short only at the end of the file: the rest reads as zeros (IoEngine.preadv).
      if (n < bytes) qiov.fill(qiovOffset + n, bytes - n, 0);
      return n;
    } catch (e) {
      throw ioError(e, "read", offset);
    } finally {
      if (bounce) pool!.put(bounce);
      this.#end(fd);
    }
  }

  async pwritev(
    fd: number,
    offset: number,
    qiov: IoVector,
    qiovOffset: number,
    bytes: number,
    fua: boolean,
  ): Promise<number> {
    this.#begin(fd);
    const pool = this.#pool;
    const bounce = pool ? pool.get(bytes) : null;
    try {
      const fs = loadedNodeFs() ?? await loadNodeFs();
      let n: number;
      if (bounce) {
        qiov.copyTo(qiovOffset, bounce.bytes, 0, bytes);
        n = await writeAt(fs, fd, bounce.bytes.subarray(0, bytes), offset);
      } else {
        n = await writevAt(fs, fd, qiov.slices(qiovOffset, bytes), offset);
      }
      // FUA without RWF_DSYNC: make the write stable before completing it.
      if (fua) await syncFd(fs, fd, true);
      return n;
    } catch (e) {
      throw ioError(e, "write", offset);
    } finally {
      if (bounce) pool!.put(bounce);
      this.#end(fd);
    }
  }

  async fsync(fd: number, datasync: boolean): Promise<void> {
    this.#begin(fd);
    try {
      await syncFd(loadedNodeFs() ?? await loadNodeFs(), fd, datasync);
    } catch (e) {
      throw ioError(e, "flush", 0);
    } finally {
      this.#end(fd);
    }
  }

  fallocate(_fd: number, _mode: number, offset: number, _length: number): Promise<void> {
    return Promise.reject(
      new BlockError("ENOTSUP", "The threads I/O engine cannot fallocate", {
        offset,
        op: "fallocate",
      }),
    );
  }

  /** `node:fs` has no `sync_file_range`: the hint is dropped. */
  startWriteback(_fd: number, _offset: number, _length: number): Promise<void> {
    return Promise.resolve();
  }

  /** Thread-pool requests cannot be cancelled: waits for those in flight on `fd`. */
  drainFd(fd: number): Promise<void> {
    if (!this.#inflight.has(fd)) return Promise.resolve();
    return new Promise((resolve) => this.#drains.push({ fd, resolve }));
  }

  /** Waits for every request (their bounce buffers are in the pool), then frees the pool. */
  async release(): Promise<void> {
    for (const fd of [...this.#inflight.keys()]) await this.drainFd(fd);
    this.#pool?.destroy();
    this.#pool = null;
  }

  /** `node:fs`'s calls: the only descriptors Deno's `node:fs` accepts are its own. */
  files(): Promise<HostFiles> {
    return nodeFiles();
  }
}

/**
 * Creates a `threads` engine for one file node. With `direct`, requests bounce through an
 * aligned pool; this throws a BlockError naming the reason when that memory cannot be had
 * (no FFI).
 */
export function createThreadsEngine(options: EngineOptions): IoEngine {
  try {
    return new ThreadsEngine(options.direct);
  } catch (e) {
    throw new BlockError(
      "ENOTSUP",
      `threads: O_DIRECT needs aligned memory: ${e instanceof Error ? e.message : String(e)}`,
    );
  }
}
