/**
 * Sending a range of a host file to a socket without copying it through memory: a message
 * header with `send(MSG_MORE)`, then the range with `sendfile(2)`, both on the JS thread and
 * never blocking it. The kernel moves page-cache pages into the socket; the process touches
 * no byte of the data.
 *
 * This is how the NBD server answers large reads from a file it serves (see `preadHost` in
 * `@blockgraph/core`). Measured on loopback TCP, `nbdcopy` of a cached 1 GiB export to
 * `null:`: 0.34-0.45 s and 240-305 ms of server CPU this way, against 0.51-0.66 s and
 * 520-630 ms reading each range into a buffer (io_uring) and writing it with `conn.write`,
 * and 0.44-0.55 s and 400-485 ms for nbdkit's file plugin. io_uring splice chains (file ->
 * pipe -> socket) and io_uring reads followed by async sends both came out slower than
 * `sendfile` on the JS thread, which makes no thread hop at all.
 *
 * `sendfile` reads the file through the page cache, and a page it has to fetch from the
 * disk would stall the event loop; {@link rangeCached} asks the kernel (`cachestat(2)`, Linux
 * 6.5 and later) whether every page of a range is cached, and the caller reads the range the
 * ordinary way when it is not (which caches it). Where `cachestat` is missing the answer is
 * always no.
 *
 * Lengths and the system call number go to FFI as numbers (Deno takes them for 64-bit
 * parameters, whatever its types say), so no call allocates a BigInt.
 *
 * The socket is non-blocking (Deno's sockets are): when it is full the send waits for it to
 * drain with `poll(2)` on a pool thread, then goes on where it stopped.
 *
 * @module
 */

import { BlockError, errnoCode, strerror } from "@blockgraph/core";
import { lastErrno } from "./libc.ts";
import { MAX_SEND, MSG, POLL, socketLibc, SYS_CACHESTAT } from "./socket_libc.ts";

const EINTR = 4;
const EAGAIN = 11;
const ENOSYS = 38;
const PAGE = 4096;
/** How long one wait for a full socket lasts before it looks again (ms). */
const POLL_MS = 1000;

/** The header: without blocking, without SIGPIPE, and held for the data after it. */
const SEND_FLAGS = MSG.DONTWAIT | MSG.NOSIGNAL | MSG.MORE;

// Arguments of the synchronous calls, reused: JavaScript runs one call at a time.
const range = new Uint32Array(4); // struct cachestat_range { u64 off, len }
const rangeBytes = new Uint8Array(range.buffer);
const cstat = new Uint32Array(10); // struct cachestat { u64 nr_cache, nr_dirty, ... }
const cstatBytes = new Uint8Array(cstat.buffer);
const fileOffset = new Uint32Array(2); // off_t
const fileOffsetBytes = new Uint8Array(fileOffset.buffer);
let cachestatWorks = true;

/** What {@link sendHeadAndRange} has sent in this process: for tests, and for the curious. */
export const hostSendCounters = {
  /** Ranges sent completely. */
  ranges: 0,
  /** Their bytes. */
  bytes: 0,
};

function setU64(a: Uint32Array, i: number, value: number): void {
  a[i] = value >>> 0;
  a[i + 1] = Math.floor(value / 0x1_0000_0000);
}

/**
 * Whether every page of `[offset, offset + bytes)` of `fd` is in the page cache, by
 * `cachestat(2)`. False when the kernel cannot tell (before Linux 6.5: then for good) or FFI
 * is unavailable.
 */
export function rangeCached(fd: number, offset: number, bytes: number): boolean {
  if (!cachestatWorks || bytes <= 0) return false;
  let lib;
  try {
    lib = socketLibc();
  } catch {
    cachestatWorks = false;
    return false;
  }
  setU64(range, 0, offset);
  setU64(range, 2, bytes);
  if (lib.cachestat(SYS_CACHESTAT, fd, rangeBytes, cstatBytes, 0) !== 0) {
    if (lastErrno() === ENOSYS) cachestatWorks = false;
    return false;
  }
  const pages = Math.floor((offset + bytes - 1) / PAGE) - Math.floor(offset / PAGE) + 1;
  return cstat[1] !== 0 || cstat[0]! >= pages;
}

/**
 * Whether the kernel has `cachestat(2)` (Linux 6.5 and later). Without it {@link rangeCached}
 * always answers no, so no read is ever sent with `sendfile`.
 */
export function cachestatAvailable(): boolean {
  // No such descriptor: EBADF where the call exists, ENOSYS where it does not.
  if (cachestatWorks) rangeCached(0x7fff_ffff, 0, 1);
  return cachestatWorks;
}

/**
 * After `call` failed on the JS thread: true to call again (EINTR), false to wait for room in
 * the socket (EAGAIN); any other errno is thrown as a BlockError.
 */
function retry(call: string): boolean {
  const e = lastErrno();
  if (e === EINTR) return true;
  if (e === EAGAIN) return false;
  const code = errnoCode(e);
  throw new BlockError(code, `${call} to the socket failed: ${strerror(code)}`);
}

const NOW_FLAGS = MSG.DONTWAIT | MSG.NOSIGNAL;

/**
 * Sends as much of `data` on socket `sock` as it takes without blocking (`flags` as for
 * send(2), MSG_DONTWAIT among them; default: a message of its own); returns the bytes sent,
 * fewer than `data.length` when the socket filled up. Throws a BlockError when a call fails.
 */
export function sendNow(sock: number, data: Uint8Array, flags = NOW_FLAGS): number {
  const lib = socketLibc();
  let p = 0;
  while (p < data.length) {
    const rest = p === 0 ? data : data.subarray(p);
    const n = Number(lib.send(sock, rest, Math.min(rest.length, MAX_SEND), flags));
    if (n >= 0) p += n;
    else if (!retry("send")) break;
  }
  return p;
}

/** Counts a range sent completely. */
function counted(bytes: number): void {
  hostSendCounters.ranges++;
  hostSendCounters.bytes += bytes;
}

/**
 * Sends from progress `p` (bytes of head and range already sent) as far as the socket takes
 * without blocking; returns the new progress. Throws a BlockError on a failed call.
 */
function advance(
  sock: number,
  head: Uint8Array,
  fd: number,
  offset: number,
  bytes: number,
  p: number,
): number {
  const lib = socketLibc();
  const hl = head.length;
  const total = hl + bytes;
  if (p < hl) {
    p += sendNow(sock, p === 0 ? head : head.subarray(p), SEND_FLAGS);
    if (p < hl) return p;
  }
  while (p < total) {
    setU64(fileOffset, 0, offset + p - hl);
    const n = Number(lib.sendfile(sock, fd, fileOffsetBytes, Math.min(total - p, MAX_SEND)));
    if (n > 0) p += n;
    else if (n < 0) {
      if (!retry("sendfile")) return p;
    } else {
      throw new BlockError(
        "EIO",
        `sendfile: the file ended at ${offset + p - hl}, before the ${bytes} bytes at ${offset}`,
        { offset: offset + p - hl },
      );
    }
  }
  return p;
}

/**
 * Sends `head` and then `bytes` bytes of file `fd` from `offset` on socket `sock`, as one
 * stream (the header waits in the socket for the data: MSG_MORE). Resolves when all of it is
 * in the socket; the fd must stay open until then. Rejects with a BlockError when a call
 * fails (EPIPE or ECONNRESET: the peer left; EIO: the file could not be read, or ended
 * early): the socket then holds part of the message, and the connection is beyond saving.
 */
export async function sendHeadAndRange(
  sock: number,
  head: Uint8Array,
  fd: number,
  offset: number,
  bytes: number,
): Promise<void> {
  const total = head.length + bytes;
  let p = advance(sock, head, fd, offset, bytes, 0);
  if (p < total) {
    const pfd = new Int32Array(2); // struct pollfd { int fd; short events, revents; }
    const pfdBytes = new Uint8Array(pfd.buffer);
    while (p < total) {
      pfd[0] = sock;
      pfd[1] = POLL.OUT;
      await socketLibc().pollWait(pfdBytes, 1n, POLL_MS);
      p = advance(sock, head, fd, offset, bytes, p);
    }
  }
  counted(bytes);
}
