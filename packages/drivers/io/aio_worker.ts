/**
 * The `native` engine's helper thread, a Deno Worker. System calls that kernel AIO has no
 * opcode for (`fallocate(2)`, and `fsync(2)` on kernels before 4.18) run here synchronously,
 * off the event loop's thread, and errno is read on the thread that set it, which a
 * nonblocking FFI call (run on a pool thread) cannot do.
 *
 * Messages in are {@link AioWorkerRequest}s; each gets one {@link AioWorkerReply} with the
 * same id, whose `result` is 0 or `-errno`.
 *
 * {@link startAioWorker} runs the thread from the source of {@link serveAioRequests} in a
 * `data:` URL, not from a file beside this module: a bundle of the CLI (`deno task build`)
 * is one file whose `import.meta.url` is the bundle's, and `deno bundle` leaves a worker's
 * `new URL("./x.ts", import.meta.url)` pointing at a file the bundle does not have. So
 * {@link serveAioRequests} refers to nothing but its argument and the globals: no imports,
 * no other names of this module.
 *
 * @module
 */

/** A system call for the helper thread. */
export interface AioWorkerRequest {
  /** Matches the reply to the request. */
  id: number;
  /** `fallocate`, `sync_file_range`, `fsync` or `fdatasync`. */
  call: "fallocate" | "sync_file_range" | "fsync" | "fdatasync";
  /** The file descriptor (shared by every thread of the process). */
  fd: number;
  /** `fallocate` mode bits, `sync_file_range` flags (0 for the others). */
  mode: number;
  /** `fallocate` and `sync_file_range` offset (0 for the others). */
  offset: number;
  /** `fallocate` and `sync_file_range` length (0 for the others). */
  length: number;
}

/** The answer to one {@link AioWorkerRequest}. */
export interface AioWorkerReply {
  /** The request's id. */
  id: number;
  /** 0, or the negated errno. */
  result: number;
}

/** The part of a Worker's global scope that {@link serveAioRequests} uses. */
export interface AioWorkerScope {
  /** Receives the requests. */
  onmessage: ((e: MessageEvent<AioWorkerRequest>) => void) | null;
  /** Sends a reply. */
  postMessage(message: AioWorkerReply): void;
}

/**
 * Runs the requests `scope` receives: the helper thread's body, called with the Worker's
 * global scope. Its source is the thread's whole program (see the module doc), so it must
 * not use anything from outside its own body but globals.
 */
export function serveAioRequests(scope: AioWorkerScope): void {
  const lib = Deno.dlopen(
    "libc.so.6",
    {
      fallocate: { parameters: ["i32", "i32", "i64", "i64"], result: "i32" },
      sync_file_range: { parameters: ["i32", "i64", "i64", "u32"], result: "i32" },
      fsync: { parameters: ["i32"], result: "i32" },
      fdatasync: { parameters: ["i32"], result: "i32" },
      __errno_location: { parameters: [], result: "pointer" },
    } as const,
  );
  const where = lib.symbols.__errno_location();
  // errno's address is fixed for the life of a thread: read it through one view.
  const errno = where === null
    ? null
    : new Int32Array(Deno.UnsafePointerView.getArrayBuffer(where, 4));
  scope.onmessage = (e) => {
    const { id, call, fd, mode, offset, length } = e.data;
    let rc: number;
    if (call === "fallocate") rc = lib.symbols.fallocate(fd, mode, BigInt(offset), BigInt(length));
    else if (call === "sync_file_range") {
      rc = lib.symbols.sync_file_range(fd, BigInt(offset), BigInt(length), mode);
    } else if (call === "fsync") rc = lib.symbols.fsync(fd);
    else rc = lib.symbols.fdatasync(fd);
    const result = rc === 0 ? 0 : -(errno?.[0] || 5);
    scope.postMessage({ id, result });
  };
}

/** The helper thread's program: {@link serveAioRequests} called on the Worker's scope. */
const PROGRAM = `(${serveAioRequests})(globalThis);\n`;

/**
 * Starts a helper thread. It inherits the process's permissions; without FFI it fails to
 * start, which the Worker reports through its `error` event.
 *
 * @example
 * ```ts
 * import type { AioWorkerReply } from "./aio_worker.ts";
 * import { startAioWorker } from "./aio_worker.ts";
 * const w = startAioWorker();
 * const reply = await new Promise<AioWorkerReply>((done) => {
 *   w.onmessage = (e) => done(e.data);
 *   w.postMessage({ id: 1, call: "fsync", fd: -1, mode: 0, offset: 0, length: 0 });
 * });
 * console.assert(reply.id === 1 && reply.result === -9); // EBADF
 * w.terminate();
 * ```
 */
export function startAioWorker(): Worker {
  const url = "data:text/javascript," + encodeURIComponent(PROGRAM);
  return new Worker(url, { type: "module" });
}
