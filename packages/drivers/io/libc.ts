/**
 * The C library symbols the FFI engines use, opened once per process from `libc.so.6`.
 *
 * Declarations follow the measured rules in `io-uring-from-deno.md`: every symbol has its exact
 * arity (Deno silently drops extra arguments), kernel `unsigned int` parameters are `u32` and
 * results `i32` so calls stay on V8's fast path, and 64-bit values are avoided on the hot path.
 *
 * errno is thread-local. Calls made on the JS thread read it with {@link lastErrno} right after
 * the failing call. Calls made with `nonblocking: true` run on a pool thread where errno is
 * lost, so only symbols whose result carries the error are declared nonblocking:
 * `posix_fallocate` returns the error number, and the io_uring wait, which can only fail
 * transiently, is replayed without waiting on the JS thread to learn its errno (see
 * `uring.ts`).
 *
 * @module
 */

/** System call numbers on x86-64 and arm64: io_uring's three, and `statx(2)`. */
export const SYS = {
  /** io_uring_setup */
  IO_URING_SETUP: 425,
  /** io_uring_enter */
  IO_URING_ENTER: 426,
  /** io_uring_register */
  IO_URING_REGISTER: 427,
  /** statx: the one number here that differs between the two architectures. */
  STATX: Deno.build.arch === "aarch64" ? 291 : 332,
} as const;

/** mmap(2) protection and flag bits, and its failure value. */
export const MMAP = {
  /** PROT_READ */
  PROT_READ: 0x1,
  /** PROT_WRITE */
  PROT_WRITE: 0x2,
  /** MAP_SHARED */
  MAP_SHARED: 0x01,
  /** MAP_PRIVATE */
  MAP_PRIVATE: 0x02,
  /** MAP_ANONYMOUS */
  MAP_ANONYMOUS: 0x20,
  /** MAP_POPULATE */
  MAP_POPULATE: 0x8000,
} as const;

/** lseek(2) whence values. */
export const SEEK = {
  /** Next data at or after the offset. */
  DATA: 3,
  /** Next hole at or after the offset. */
  HOLE: 4,
} as const;

const SYMBOLS = {
  setup: { name: "syscall", parameters: ["i64", "u32", "buffer"], result: "i32" },
  /** io_uring_enter without waiting arguments: nr, fd, to_submit, min_complete, flags, sig. */
  enter: {
    name: "syscall",
    parameters: ["u32", "u32", "u32", "u32", "u32", "pointer"],
    result: "i32",
  },
  /**
   * io_uring_enter with IORING_ENTER_EXT_ARG: nr, fd, to_submit, min_complete, flags, arg,
   * argsz (the 7th argument pointer-sized, or the fast call leaves its upper half garbage).
   */
  enterArg: {
    name: "syscall",
    parameters: ["u32", "u32", "u32", "u32", "u32", "pointer", "usize"],
    result: "i32",
  },
  /** The same call run on a pool thread, for waiting without blocking the event loop. */
  enterWait: {
    name: "syscall",
    parameters: ["u32", "u32", "u32", "u32", "u32", "pointer"],
    result: "i32",
    nonblocking: true,
  },
  /**
   * `pwritev(fd, iov, iovcnt, offset)` on the JS thread, for page-cache writes: the iovecs as
   * a buffer, the offset as a BigInt. A number given for a 64-bit parameter is accepted, but
   * V8's fast call takes only a BigInt there: code optimized around the call is thrown away at
   * it and optimized again, over and over (a loop of 500k 512-byte writes: 142 deoptimizations
   * and 0.35-0.38 µs a call with numbers, none and 0.21 µs with the offset's BigInt made per
   * call). Hot calls therefore pass BigInts or take 32-bit parameters (`socket_libc.ts`).
   */
  pwritev: { parameters: ["i32", "buffer", "i32", "i64"], result: "i32" },
  register: {
    name: "syscall",
    parameters: ["i64", "u32", "u32", "buffer", "u32"],
    result: "i32",
  },
  mmap: {
    parameters: ["pointer", "usize", "i32", "i32", "i32", "i64"],
    result: "pointer",
  },
  munmap: { parameters: ["pointer", "usize"], result: "i32" },
  madvise: { parameters: ["pointer", "usize", "i32"], result: "i32" },
  posix_memalign: { parameters: ["buffer", "usize", "usize"], result: "i32" },
  free: { parameters: ["pointer"], result: "void" },
  posix_fallocate: {
    parameters: ["i32", "i64", "i64"],
    result: "i32",
    nonblocking: true,
  },
  /**
   * `getpid()` on a pool thread: the cheapest real turn of Deno's event loop (about 30 µs;
   * timers and socket I/O run meanwhile, which immediates and message ports do not allow).
   */
  turn: { name: "getpid", parameters: [], result: "i32", nonblocking: true },
  close: { parameters: ["i32"], result: "i32" },
  /** `open(path, flags, mode)`: the host-file calls of `posix_file.ts`. */
  open: { parameters: ["buffer", "i32", "u32"], result: "i32" },
  /**
   * `statx(2)` (nr, dirfd, path, flags, mask, buf) as a raw system call: one struct layout on
   * every architecture, and no need of glibc 2.28's wrapper (a missing symbol would fail the
   * whole table, io_uring's calls with it).
   */
  statx: {
    name: "syscall",
    parameters: ["u32", "i32", "buffer", "i32", "u32", "buffer"],
    result: "i32",
  },
  /** `ftruncate(fd, length)` on the JS thread, where errno can be read after it. */
  ftruncate: { parameters: ["i32", "i64"], result: "i32" },
  /** The same call on a pool thread (errno is lost there: a failure is replayed). */
  ftruncateWait: {
    name: "ftruncate",
    parameters: ["i32", "i64"],
    result: "i32",
    nonblocking: true,
  },
  lseek: { parameters: ["i32", "i64", "i32"], result: "i64" },
  /** `fcntl(fd, cmd, struct flock *)`: open file description locks (image locking). */
  fcntl: { parameters: ["i32", "i32", "buffer"], result: "i32" },
  pread: { parameters: ["i32", "pointer", "usize", "i64"], result: "isize" },
  /** `ioctl(fd, request, arg)` with a buffer argument: file attributes (`file_posix.ts`). */
  ioctl: { parameters: ["i32", "usize", "buffer"], result: "i32" },
  __errno_location: { parameters: [], result: "pointer" },
} as const satisfies Deno.ForeignLibraryInterface;

/** The loaded symbols. */
export type LibcSymbols = Deno.DynamicLibrary<typeof SYMBOLS>["symbols"];

let errnoView: Deno.UnsafePointerView | null = null;

/**
 * A loader of `symbols` from `libc.so.6`: the returned function opens the library at its
 * first call and hands out the symbols. It throws an Error whose message says why when FFI or
 * `libc.so.6` is unavailable (no `--allow-ffi`, not glibc); the reason is kept, so later calls
 * fail the same way without retrying. Each table is opened apart, so a process binds only the
 * symbols it uses.
 */
export function libcLoader<S extends Deno.ForeignLibraryInterface>(
  symbols: S,
): () => Deno.DynamicLibrary<S>["symbols"] {
  let lib: Deno.DynamicLibrary<S> | null = null;
  let loadError: string | null = null;
  return () => {
    if (lib) return lib.symbols;
    if (loadError !== null) throw new Error(loadError);
    try {
      lib = Deno.dlopen("libc.so.6", symbols);
    } catch (e) {
      loadError = `cannot load libc.so.6: ${e instanceof Error ? e.message : String(e)}`;
      throw new Error(loadError);
    }
    return lib.symbols;
  };
}

/** The C library's symbols of the engines and host-file calls, loaded at first use. */
export const libc: () => LibcSymbols = libcLoader(SYMBOLS);

/**
 * errno of the last failed call made on the JS thread. Read it immediately after the call:
 * anything in between may change it.
 */
export function lastErrno(): number {
  if (!errnoView) {
    const p = libc().__errno_location();
    if (p === null) return 5;
    errnoView = new Deno.UnsafePointerView(p);
  }
  return errnoView.getInt32();
}

/** The numeric address of a pointer (addresses fit in 2^53 on every 64-bit Linux). */
export function addressOf(p: Deno.PointerValue): number {
  return p === null ? 0 : Number(Deno.UnsafePointer.value(p));
}

const bufferBase = new WeakMap<ArrayBufferLike, number>();

/**
 * The address of byte 0 of `view`, as a number. The base address of each ArrayBuffer is
 * computed once (a BigInt conversion) and cached, so repeated calls on the same buffers cost
 * a WeakMap lookup. V8 does not move an ArrayBuffer's backing store once `.buffer` has been
 * asked for, so the cached address stays valid for the buffer's life.
 */
export function viewAddress(view: Uint8Array): number {
  const buffer = view.buffer;
  let base = bufferBase.get(buffer);
  if (base === undefined) {
    base = addressOf(Deno.UnsafePointer.of(buffer));
    bufferBase.set(buffer, base);
  }
  return base + view.byteOffset;
}

/**
 * Allocates `size` bytes aligned to `align` with `posix_memalign`; returns the pointer.
 * Throws an Error naming the errno on failure.
 */
export function alignedAlloc(size: number, align: number): Deno.PointerObject {
  const out = new BigUint64Array(1);
  const rc = libc().posix_memalign(new Uint8Array(out.buffer), BigInt(align), BigInt(size));
  if (rc !== 0 || out[0] === 0n) {
    throw new Error(`posix_memalign(${align}, ${size}) failed with errno ${rc}`);
  }
  return Deno.UnsafePointer.create(out[0]!)!;
}

/** madvise(2) advice: back the range with transparent huge pages where the kernel can. */
export const MADV_HUGEPAGE = 14;
/** The size of a transparent huge page on x86-64 and arm64 with 4 KiB pages. */
export const HUGE_PAGE = 2 * 1024 * 1024;

/**
 * {@link alignedAlloc} for I/O buffers: from {@link HUGE_PAGE} up, the memory is aligned to
 * and sized in huge pages and advised to use them (when the kernel refuses, it stays in 4 KiB
 * pages). Direct I/O pins and maps every page of its buffer for each request: a 1 MiB read
 * into 4 KiB pages is 256 pages to pin and, on a virtio disk, more segments than one request
 * takes. 1 MiB sequential reads at depth 8 with O_DIRECT here: 3.0 s and 535 ms CPU for 3000
 * requests into 4 KiB pages, 1.36 s and 231 ms into huge pages. Returns the pointer and the
 * size actually allocated.
 */
export function ioAlloc(size: number, align: number): { ptr: Deno.PointerObject; size: number } {
  if (size < HUGE_PAGE) return { ptr: alignedAlloc(size, align), size };
  const rounded = Math.ceil(size / HUGE_PAGE) * HUGE_PAGE;
  const ptr = alignedAlloc(rounded, Math.max(align, HUGE_PAGE));
  libc().madvise(ptr, BigInt(rounded), MADV_HUGEPAGE);
  return { ptr, size: rounded };
}

/** Frees memory from {@link alignedAlloc} or {@link ioAlloc}. Views over it must not be touched afterwards. */
export function alignedFree(p: Deno.PointerObject): void {
  libc().free(p);
}
