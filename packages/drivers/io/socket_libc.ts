/**
 * The C library's socket and page-cache calls: the second table of `libc.so.6` symbols, for
 * sending host file ranges to sockets (`host_send.ts`) and finding the descriptor under a
 * Deno connection (`socket_fd.ts`). It is opened apart from the engines' table in `libc.ts`
 * (and only when first used) so that commands which never serve a socket do not pay for
 * binding these symbols at start-up.
 *
 * Every call runs on the JS thread, where errno can be read after it (`lastErrno`), except
 * `pollWait`, which blocks on a pool thread and whose result alone is used.
 *
 * @module
 */

import { libcLoader } from "./libc.ts";

/** Linux's `cachestat(2)` system call number (the same on x86-64 and arm64). */
export const SYS_CACHESTAT = 451;

/** send(2) flags. */
export const MSG = {
  /** MSG_DONTWAIT: fail with EAGAIN rather than block. */
  DONTWAIT: 0x40,
  /** MSG_NOSIGNAL: no SIGPIPE on a closed peer, EPIPE instead. */
  NOSIGNAL: 0x4000,
  /** MSG_MORE: more data follows; hold this in the socket until it does. */
  MORE: 0x8000,
} as const;

/** poll(2) event bits. */
export const POLL = {
  /** Writable. */
  OUT: 0x4,
} as const;

/**
 * The largest count the calls below take: their `size_t` counts are declared `u32`. V8's fast
 * calls take a 64-bit parameter only as a BigInt: given a number, code optimized around the
 * call is thrown away at the call ("not a BigInt") and optimized again, over and over (NBD
 * 4 KiB reads on a unix socket: `sendNow` and four callers inlining it deoptimized 29 times
 * in 100k requests, a loop of 200k sends 797 -> 624 ms with a `u32` count). A count in a
 * register is zero-extended to the `size_t` the C library reads (writing a 32-bit register
 * clears the upper half, on x86-64 and arm64 alike); callers send at most this much per call
 * and loop for the rest.
 */
export const MAX_SEND = 0x7fffffff;

const SYMBOLS = {
  /** `send(fd, buf, len, flags)`; `len` at most {@link MAX_SEND}. */
  send: { parameters: ["i32", "buffer", "u32", "i32"], result: "isize" },
  /** `sendfile(out_fd, in_fd, off_t *offset, count)`; `count` at most {@link MAX_SEND}. */
  sendfile: { parameters: ["i32", "i32", "buffer", "u32"], result: "isize" },
  /** `poll(fds, nfds, timeout)` on a pool thread. */
  pollWait: {
    name: "poll",
    parameters: ["buffer", "u64", "i32"],
    result: "i32",
    nonblocking: true,
  },
  /** `shutdown(fd, how)`. */
  shutdown: { parameters: ["i32", "i32"], result: "i32" },
  getsockname: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
  getpeername: { parameters: ["i32", "buffer", "buffer"], result: "i32" },
  /** `cachestat(fd, range, cstat, flags)` through `syscall` (glibc has no wrapper). */
  cachestat: {
    name: "syscall",
    // The number as `u32`, as `libc.ts` passes io_uring's (see MAX_SEND for why not i64).
    parameters: ["u32", "u32", "buffer", "buffer", "u32"],
    result: "i32",
  },
} as const satisfies Deno.ForeignLibraryInterface;

/** The loaded symbols. */
export type SocketLibcSymbols = Deno.DynamicLibrary<typeof SYMBOLS>["symbols"];

/** The symbols, loaded at first use (see `libcLoader`). */
export const socketLibc: () => SocketLibcSymbols = libcLoader(SYMBOLS);
