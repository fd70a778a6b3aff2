/**
 * The kernel AIO interface as the `native` engine drives it: libaio's syscall wrappers
 * (Debian's `libaio1`, `libaio.so.1`), and the x86-64/arm64 layouts of `struct iocb`,
 * `struct io_event` and the completion ring (`struct aio_ring`) the kernel maps at the
 * context's address.
 *
 * libaio's wrappers are raw system calls that return `-errno`, so they are safe to run on a
 * pool thread (`nonblocking: true`), where errno would be lost.
 *
 * @module
 */

import { BlockError } from "@blockgraph/core";

/** The size of `struct iocb`. */
export const IOCB_SIZE = 64;
/** The size of `struct io_event`. */
export const IO_EVENT_SIZE = 32;
/** The size of the `struct aio_ring` header; the events follow it. */
export const AIO_RING_HEADER = 32;
/** `AIO_RING_MAGIC`: the ring may be read from user space when the header carries it. */
export const AIO_RING_MAGIC = 0xa10a10a1;

/**
 * `struct iocb` as 32-bit words: aio_data @0, aio_rw_flags @12, aio_lio_opcode @16,
 * aio_fildes @20, aio_buf @24, aio_nbytes @32, aio_offset @40.
 */
export const IOCB_WORD = {
  /** aio_data, low half (the engine keeps its slot index there). */
  DATA: 0,
  /** aio_rw_flags (RWF_*). */
  RW_FLAGS: 3,
  /** aio_lio_opcode (u16) with aio_reqprio (s16, kept 0). */
  OPCODE: 4,
  /** aio_fildes. */
  FILDES: 5,
  /** aio_buf, low half. */
  BUF: 6,
  /** aio_nbytes, low half. */
  NBYTES: 8,
  /** aio_offset, low half. */
  OFFSET: 10,
} as const;

/** `struct aio_ring` header as 32-bit words. */
export const RING_WORD = {
  /** Number of io_events in the ring. */
  NR: 1,
  /** Next event to consume (written by whoever consumes). */
  HEAD: 2,
  /** Next event the kernel fills. */
  TAIL: 3,
  /** AIO_RING_MAGIC. */
  MAGIC: 4,
  /** Incompatible features: user-space reaping is off unless this is 0. */
  INCOMPAT: 6,
} as const;

/** `IOCB_CMD_*` opcodes. */
export const IOCB_CMD = {
  /** fsync(2). */
  FSYNC: 2,
  /** fdatasync(2). */
  FDSYNC: 3,
  /** preadv(2). */
  PREADV: 7,
  /** pwritev(2). */
  PWRITEV: 8,
} as const;

/** `RWF_DSYNC`: a write with per-request O_DSYNC semantics (Linux 4.13). */
export const RWF_DSYNC = 2;

const SYMBOLS = {
  io_setup: { parameters: ["i32", "buffer"], result: "i32" },
  /** Waits for the context's requests, so it runs on a pool thread. */
  io_destroy: { parameters: ["pointer"], result: "i32", nonblocking: true },
  /**
   * `nr` (a C long) is declared as a pointer: a 64-bit argument that stays on V8's fast call
   * path, passed from a table made once by {@link countArgs}, so no BigInt is made per call.
   */
  io_submit: { parameters: ["pointer", "pointer", "pointer"], result: "i32" },
  /** With a zero timeout: collects what is there without waiting. */
  io_getevents: {
    parameters: ["pointer", "i64", "i64", "pointer", "pointer"],
    result: "i32",
  },
  /** The waiting form, run on a pool thread. */
  io_getevents_wait: {
    name: "io_getevents",
    parameters: ["pointer", "i64", "i64", "pointer", "pointer"],
    result: "i32",
    nonblocking: true,
  },
  io_cancel: { parameters: ["pointer", "pointer", "pointer"], result: "i32" },
} as const satisfies Deno.ForeignLibraryInterface;

/** libaio's symbols. */
export type AioSymbols = Deno.DynamicLibrary<typeof SYMBOLS>["symbols"];

/** The library file name, as Debian's `libaio1` installs it. */
export const LIBAIO = "libaio.so.1";

let lib: Deno.DynamicLibrary<typeof SYMBOLS> | null = null;

/**
 * Loads libaio (from `name`, normally {@link LIBAIO}) once per process. Throws a BlockError
 * (ENOTSUP) saying what is missing when the library cannot be opened.
 */
export function libaio(name: string = LIBAIO): AioSymbols {
  if (lib && name === LIBAIO) return lib.symbols;
  let opened: Deno.DynamicLibrary<typeof SYMBOLS>;
  try {
    opened = Deno.dlopen(name, SYMBOLS);
  } catch (e) {
    const text = e instanceof Error ? e.message : String(e);
    const missing = /cannot open shared object|No such file|not found/i.test(text);
    throw new BlockError(
      "ENOTSUP",
      missing ? `${name} not found (install libaio1)` : `Could not load ${name}: ${text}`,
      { cause: e },
    );
  }
  if (name === LIBAIO) lib = opened;
  return opened.symbols;
}

/**
 * Pointer values standing for the counts 0 to `n`, for 64-bit integer arguments declared as
 * pointers (index 0 is null, which passes 0).
 */
export function countArgs(n: number): Deno.PointerValue[] {
  const out: Deno.PointerValue[] = [];
  for (let i = 0; i <= n; i++) out.push(Deno.UnsafePointer.create(BigInt(i)));
  return out;
}

/** The running kernel's `[major, minor]`, from `Deno.osRelease()`. */
export function kernelVersion(release: string = Deno.osRelease()): [number, number] {
  const m = /^(\d+)\.(\d+)/.exec(release);
  return m ? [Number(m[1]), Number(m[2])] : [0, 0];
}

/** Whether the kernel is at least `major.minor`. */
export function kernelAtLeast(major: number, minor: number, release?: string): boolean {
  const [a, b] = kernelVersion(release);
  return a > major || (a === major && b >= minor);
}
