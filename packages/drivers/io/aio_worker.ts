/**
 * The `native` engine's helper thread, a Deno Worker. System calls that kernel AIO has no
 * opcode for (`fallocate(2)`, and `fsync(2)` on kernels before 4.18) run here synchronously,
 * off the event loop's thread, and errno is read on the thread that set it, which a
 * nonblocking FFI call (run on a pool thread) cannot do.
 *
 * Messages in are {@link AioWorkerRequest}s; each gets one {@link AioWorkerReply} with the
 * same id, whose `result` is 0 or `-errno`.
 *
 * @module
 */

/** A system call for the helper thread. */
export interface AioWorkerRequest {
  /** Matches the reply to the request. */
  id: number;
  /** `fallocate`, `fsync` or `fdatasync`. */
  call: "fallocate" | "fsync" | "fdatasync";
  /** The file descriptor (shared by every thread of the process). */
  fd: number;
  /** `fallocate` mode bits (0 for the others). */
  mode: number;
  /** `fallocate` offset (0 for the others). */
  offset: number;
  /** `fallocate` length (0 for the others). */
  length: number;
}

/** The answer to one {@link AioWorkerRequest}. */
export interface AioWorkerReply {
  /** The request's id. */
  id: number;
  /** 0, or the negated errno. */
  result: number;
}

interface WorkerScope {
  onmessage: ((e: MessageEvent<AioWorkerRequest>) => void) | null;
  postMessage(message: AioWorkerReply): void;
}

/** Runs the requests this thread receives; only called when loaded as a Worker. */
function serve(scope: WorkerScope): void {
  const lib = Deno.dlopen(
    "libc.so.6",
    {
      fallocate: { parameters: ["i32", "i32", "i64", "i64"], result: "i32" },
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
    else if (call === "fsync") rc = lib.symbols.fsync(fd);
    else rc = lib.symbols.fdatasync(fd);
    const result = rc === 0 ? 0 : -(errno?.[0] || 5);
    scope.postMessage({ id, result });
  };
}

// Only a Worker's global scope has WorkerGlobalScope: importing this module elsewhere (for its
// types) starts nothing.
if (typeof (globalThis as { WorkerGlobalScope?: unknown }).WorkerGlobalScope === "function") {
  serve(globalThis as unknown as WorkerScope);
}
