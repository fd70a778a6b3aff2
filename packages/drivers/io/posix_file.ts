/**
 * Opening, closing, `fstat` and `ftruncate` of host files, for the `file` protocol: through
 * the C library over FFI ({@link libcFiles}) where it can be loaded, otherwise through Deno's
 * `node:fs` ({@link nodeFiles}), which is imported on first use. Importing `node:fs` starts
 * Deno's Node compatibility layer, about 20 ms of every process start on its own, which a
 * command that never opens a file (or opens it through FFI) should not pay.
 *
 * Both hand out real descriptors, which the FFI engines, `lseek` and `pread` accept. The
 * `threads` engine needs descriptors that `node:fs` opened (Deno's `node:fs` refuses any
 * other with EBADF), so each engine says which calls open its files ({@link IoEngine.files}).
 *
 * Failures are BlockErrors with the errno code, naming the call and what it was called on,
 * and carrying the failed call as their cause; callers add their own words in QEMU's
 * `what: strerror` shape.
 *
 * @module
 */

import { BlockError, errnoCode, strerror } from "@blockgraph/core";
import type { IoEngine } from "./engine.ts";
import { lastErrno, libc, SYS } from "./libc.ts";

/** How to open a file. */
export interface OpenHow {
  /** Read-write (O_RDWR) rather than read-only (O_RDONLY). */
  write: boolean;
  /** Bypass the page cache (O_DIRECT). */
  direct?: boolean;
  /** Create the file when it does not exist (O_CREAT), with permission bits `mode`. */
  create?: boolean;
  /** The permission bits of a created file (default 0o644). */
  mode?: number;
}

/** What the `file` protocol needs from `fstat`. */
export interface FileStat {
  /** A regular file (S_ISREG). */
  regular: boolean;
  /** The size in bytes. */
  size: number;
  /** The 512-byte blocks allocated to it (`st_blocks`). */
  blocks: number;
}

/** The host-file calls of one kind of descriptor. */
export interface HostFiles {
  /** Which implementation this is. */
  readonly via: "libc" | "node:fs";
  /** Opens `path`; returns the descriptor. */
  open(path: string, how: OpenHow): number;
  /** Closes `fd`. */
  close(fd: number): void;
  /** `fstat` of `fd`. */
  fstat(fd: number): FileStat;
  /** Sets the size of `fd` to `size` bytes, off the JS thread. */
  ftruncate(fd: number, size: number): Promise<void>;
}

/** A failed call's error: its errno code and, as cause, the call as `node:fs` describes one. */
function callError(call: string, errno: number, on: string): BlockError {
  const code = errnoCode(errno);
  return new BlockError(code, `${call} ${on}: ${strerror(code)}`, {
    op: call,
    cause: { syscall: call, errno, code },
  });
}

/** Linux's open(2) flags where they differ between architectures. */
const OPEN_FLAGS: Record<string, { O_DIRECT: number }> = {
  x86_64: { O_DIRECT: 0o40000 },
  aarch64: { O_DIRECT: 0o200000 },
};
const O_RDONLY = 0;
const O_RDWR = 2;
const O_CREAT = 0o100;
const O_CLOEXEC = 0o2000000;

/** statx(2): operate on the descriptor itself (with an empty path). */
const AT_EMPTY_PATH = 0x1000;
/** statx(2) mask: STATX_TYPE | STATX_MODE | STATX_SIZE | STATX_BLOCKS. */
const STATX_WANTED = 0x1 | 0x2 | 0x200 | 0x400;
/** The size of `struct statx`, and its fields' offsets (the same on every architecture). */
const STATX_SIZE = 256;
const STX_MODE = 28;
const STX_SIZE = 40;
const STX_BLOCKS = 48;
const S_IFMT = 0o170000;
const S_IFREG = 0o100000;

const encoder = new TextEncoder();
const EMPTY_PATH = new Uint8Array(1);

function cString(path: string): Uint8Array {
  const bytes = encoder.encode(`${path}\0`);
  if (bytes.indexOf(0) !== bytes.length - 1) {
    throw new BlockError("EINVAL", `open '${path}': the path holds a NUL byte`, {
      op: "open",
      cause: { syscall: "open", errno: 22, code: "EINVAL" },
    });
  }
  return bytes;
}

class LibcFiles implements HostFiles {
  readonly via = "libc" as const;
  readonly #lib = libc();
  readonly #directFlag: number;
  readonly #statx = new Uint8Array(STATX_SIZE);
  readonly #stat = new DataView(this.#statx.buffer);

  constructor(directFlag: number) {
    this.#directFlag = directFlag;
  }

  open(path: string, how: OpenHow): number {
    const flags = (how.write ? O_RDWR : O_RDONLY) | O_CLOEXEC |
      (how.direct ? this.#directFlag : 0) | (how.create ? O_CREAT : 0);
    const fd = this.#lib.open(cString(path), flags, how.mode ?? 0o644);
    if (fd < 0) throw callError("open", lastErrno(), `'${path}'`);
    return fd;
  }

  close(fd: number): void {
    if (this.#lib.close(fd) < 0) throw callError("close", lastErrno(), `of descriptor ${fd}`);
  }

  fstat(fd: number): FileStat {
    const rc = this.#lib.statx(
      SYS.STATX,
      fd,
      EMPTY_PATH,
      AT_EMPTY_PATH,
      STATX_WANTED,
      this.#statx,
    );
    if (rc < 0) throw callError("fstat", lastErrno(), `of descriptor ${fd}`);
    const v = this.#stat;
    return {
      regular: (v.getUint16(STX_MODE, true) & S_IFMT) === S_IFREG,
      size: Number(v.getBigUint64(STX_SIZE, true)),
      blocks: Number(v.getBigUint64(STX_BLOCKS, true)),
    };
  }

  /**
   * On a pool thread (shrinking a large file can take a while); errno does not come back
   * from there, so a failure is replayed on the JS thread to learn it (setting the same size
   * twice changes nothing).
   */
  async ftruncate(fd: number, size: number): Promise<void> {
    if (await this.#lib.ftruncateWait(fd, BigInt(size)) === 0) return;
    if (this.#lib.ftruncate(fd, BigInt(size)) === 0) return;
    throw callError("ftruncate", lastErrno(), `of descriptor ${fd} to ${size} bytes`);
  }
}

let libcInstance: LibcFiles | null = null;

/**
 * The C library's calls, over FFI. Throws an Error saying why when they cannot be had: no
 * `--allow-ffi`, no glibc `libc.so.6`, or an architecture whose open(2) flags are not known
 * here (x86_64 and aarch64 are).
 */
export function libcFiles(): HostFiles {
  if (libcInstance) return libcInstance;
  const flags = OPEN_FLAGS[Deno.build.arch];
  if (!flags) throw new Error(`open(2) flags are not known for ${Deno.build.arch}`);
  libcInstance = new LibcFiles(flags.O_DIRECT);
  return libcInstance;
}

/** The parts of `node:fs` that {@link nodeFiles} and the `threads` engine use. */
export interface NodeFs {
  /** `open(2)` flag values. */
  readonly constants: {
    readonly O_RDONLY: number;
    readonly O_RDWR: number;
    readonly O_CREAT: number;
    readonly O_DIRECT: number;
  };
  /** Opens a file. */
  openSync(path: string, flags: number, mode?: number): number;
  /** Closes a descriptor. */
  closeSync(fd: number): void;
  /** `fstat`. */
  fstatSync(fd: number): { isFile(): boolean; size: number; blocks: number };
  /** `ftruncate` on the thread pool. */
  ftruncate(fd: number, len: number, cb: (err: Error | null) => void): void;
  /** `preadv` on the thread pool. */
  readv(
    fd: number,
    buffers: readonly ArrayBufferView[],
    position: number,
    cb: (err: Error | null, bytesRead: number) => void,
  ): void;
  /** `pwritev` on the thread pool. */
  writev(
    fd: number,
    buffers: readonly ArrayBufferView[],
    position: number,
    cb: (err: Error | null, bytesWritten: number) => void,
  ): void;
  /** `pread` on the thread pool. */
  read(
    fd: number,
    buffer: Uint8Array,
    offset: number,
    length: number,
    position: number,
    cb: (err: Error | null, bytesRead: number) => void,
  ): void;
  /** `pwrite` on the thread pool. */
  write(
    fd: number,
    buffer: Uint8Array,
    offset: number,
    length: number,
    position: number,
    cb: (err: Error | null, bytesWritten: number) => void,
  ): void;
  /** `fsync` on the thread pool. */
  fsync(fd: number, cb: (err: Error | null) => void): void;
  /** `fdatasync` on the thread pool. */
  fdatasync(fd: number, cb: (err: Error | null) => void): void;
}

let nodeFsModule: NodeFs | null = null;
let nodeFsLoading: Promise<NodeFs> | null = null;

/** `node:fs`, imported at the first call (later calls get the same module). */
export function loadNodeFs(): Promise<NodeFs> {
  return nodeFsLoading ??= import("node:fs").then((m: NodeFs) => nodeFsModule = m);
}

/** `node:fs` if {@link loadNodeFs} has loaded it, else null. */
export function loadedNodeFs(): NodeFs | null {
  return nodeFsModule;
}

class NodeFiles implements HostFiles {
  readonly via = "node:fs" as const;
  readonly #fs: NodeFs;

  constructor(fs: NodeFs) {
    this.#fs = fs;
  }

  open(path: string, how: OpenHow): number {
    const c = this.#fs.constants;
    const flags = (how.write ? c.O_RDWR : c.O_RDONLY) | (how.direct ? c.O_DIRECT : 0) |
      (how.create ? c.O_CREAT : 0);
    try {
      return this.#fs.openSync(path, flags, how.mode ?? 0o644);
    } catch (e) {
      throw BlockError.from(e, { op: "open" });
    }
  }

  close(fd: number): void {
    try {
      this.#fs.closeSync(fd);
    } catch (e) {
      throw BlockError.from(e, { op: "close" });
    }
  }

  fstat(fd: number): FileStat {
    try {
      const st = this.#fs.fstatSync(fd);
      return { regular: st.isFile(), size: st.size, blocks: st.blocks };
    } catch (e) {
      throw BlockError.from(e, { op: "fstat" });
    }
  }

  ftruncate(fd: number, size: number): Promise<void> {
    return new Promise((resolve, reject) => {
      this.#fs.ftruncate(
        fd,
        size,
        (err) => err ? reject(BlockError.from(err, { op: "ftruncate" })) : resolve(),
      );
    });
  }
}

let nodeInstance: Promise<HostFiles> | null = null;

/**
 * The `node:fs` calls, importing `node:fs` at the first call. Their descriptors are the only
 * ones the `threads` engine accepts.
 */
export function nodeFiles(): Promise<HostFiles> {
  return nodeInstance ??= loadNodeFs().then((fs) => new NodeFiles(fs));
}

/**
 * The calls for an engine that takes any descriptor: {@link libcFiles} where FFI and the C
 * library are there, otherwise {@link nodeFiles}.
 */
export function hostFiles(): Promise<HostFiles> {
  try {
    return Promise.resolve(libcFiles());
  } catch {
    return nodeFiles();
  }
}

/** The calls whose descriptors `engine` accepts; with no engine, {@link hostFiles}. */
export function filesFor(engine: IoEngine | null): Promise<HostFiles> {
  return engine ? engine.files() : hostFiles();
}
