/**
 * The `file` protocol driver: an image in a regular host file, read and written with
 * positional, concurrent requests through `node:fs` (the `threads` I/O engine: libuv's thread
 * pool does the system calls). The io_uring and native engines come later; this file keeps
 * the threads engine as their fallback.
 *
 * @module
 */

import fs from "node:fs";
import {
  type BlockDriver,
  BlockError,
  type DriverInstance,
  type DriverRegistry,
  type IoVector,
  type OpenContext,
  type OptionValues,
  type PreallocMode,
  type ReopenHandle,
  strerror,
} from "@blockgraph/core";

/** The I/O engines the driver accepts. Only `threads` exists so far. */
export const FILE_AIO_ENGINES = ["threads"] as const;
/** The `locking` option's values. */
export const FILE_LOCKING_MODES = ["auto", "on", "off"] as const;
/** The size of the zero buffer preallocation writes from. */
const ZERO_BUFFER_SIZE = 1024 * 1024;
let zeroBuffer: Uint8Array | null = null;

function readvAt(fd: number, bufs: Uint8Array[], position: number): Promise<number> {
  return new Promise((resolve, reject) => {
    fs.readv(fd, bufs, position, (err, n) => err ? reject(err) : resolve(n));
  });
}

function writevAt(fd: number, bufs: Uint8Array[], position: number): Promise<number> {
  return new Promise((resolve, reject) => {
    fs.writev(fd, bufs, position, (err, n) => err ? reject(err) : resolve(n));
  });
}

function callback(fn: (cb: (err: Error | null) => void) => void): Promise<void> {
  return new Promise((resolve, reject) => fn((err) => err ? reject(err) : resolve()));
}

function fstatAsync(fd: number): Promise<fs.Stats> {
  return new Promise((resolve, reject) => {
    fs.fstat(fd, (err, st) => err ? reject(err) : resolve(st));
  });
}

/** A BlockError in QEMU's `what: strerror` shape, keeping the system error as its cause. */
function sysError(err: unknown, what: string, offset?: number): BlockError {
  if (err instanceof BlockError) return err;
  const code = BlockError.from(err).code;
  return new BlockError(
    code,
    `${what}: ${strerror(code)}`,
    offset === undefined ? { cause: err } : { cause: err, offset },
  );
}

/** Removes a `file:` prefix, as the `file` protocol's filenames may carry one. */
export function stripFilePrefix(filename: string): string {
  return filename.startsWith("file:") ? filename.slice("file:".length) : filename;
}

/**
 * Writes zeros over `[from, to)` of `fd`, a megabyte at a time from one shared zero buffer.
 * This is also how `preallocation=falloc` is done: `posix_fallocate` is not reachable from
 * `node:fs`, so it gets the `full` treatment until the FFI engines bring `fallocate`.
 */
async function writeZeros(fd: number, from: number, to: number): Promise<void> {
  const zeros = zeroBuffer ??= new Uint8Array(ZERO_BUFFER_SIZE);
  for (let pos = from; pos < to;) {
    const want = Math.min(to - pos, ZERO_BUFFER_SIZE);
    const n = await writevAt(
      fd,
      [want === ZERO_BUFFER_SIZE ? zeros : zeros.subarray(0, want)],
      pos,
    );
    if (n <= 0) throw new BlockError("EIO", "Could not write zeros for preallocation");
    pos += n;
  }
}

/**
 * Resizes the open file `fd` from `current` to `size` bytes, filling the grown part as
 * `prealloc` says. Shared by truncate and create.
 */
async function resizeFile(
  fd: number,
  current: number,
  size: number,
  prealloc: PreallocMode,
): Promise<void> {
  if (prealloc !== "off" && size < current) {
    throw new BlockError("ENOTSUP", "Cannot use preallocation for shrinking files");
  }
  switch (prealloc) {
    case "off":
      try {
        await callback((cb) => fs.ftruncate(fd, size, cb));
      } catch (e) {
        throw sysError(e, "Could not resize file");
      }
      return;
    case "falloc":
    case "full":
      try {
        await callback((cb) => fs.ftruncate(fd, size, cb));
      } catch (e) {
        throw sysError(e, "Could not resize file");
      }
      try {
        await writeZeros(fd, current, size);
        await callback((cb) => fs.fdatasync(fd, cb));
      } catch (e) {
        // Leave the file as it was, as QEMU does when preallocation fails.
        await callback((cb) => fs.ftruncate(fd, current, cb)).catch(() => {});
        throw sysError(e, "Could not write zeros for preallocation");
      }
      return;
    default:
      throw new BlockError("ENOTSUP", `Unsupported preallocation mode: ${prealloc}`);
  }
}

/** An open `file` node. */
export class FileInstance implements DriverInstance {
  /** The host path. */
  readonly path: string;
  /** The I/O engine in use. */
  readonly aio: (typeof FILE_AIO_ENGINES)[number];
  /** The `locking` option as given (image locking needs the FFI engines to take OFD locks). */
  readonly locking: (typeof FILE_LOCKING_MODES)[number];
  /** Whether the file is open read-only (a reopen may change it). */
  readOnly: boolean;
  #fd: number;
  /**
   * The file size, read at open and kept by this instance's writes and truncates. Growth by
   * another process is not seen; reads past the recorded end go to the file anyway when the
   * request layer asks, and short reads fill zeros.
   */
  #length: number;

  /** Wraps an open descriptor; use the driver's `open` rather than this. */
  constructor(
    fd: number,
    path: string,
    length: number,
    readOnly: boolean,
    aio: (typeof FILE_AIO_ENGINES)[number],
    locking: (typeof FILE_LOCKING_MODES)[number],
  ) {
    this.#fd = fd;
    this.path = path;
    this.#length = length;
    this.readOnly = readOnly;
    this.aio = aio;
    this.locking = locking;
  }

  /**
   * Reopen: switching between read-only and read-write opens the file again with the new
   * mode; the new descriptor replaces the old one on commit, or is closed on abort.
   */
  reopenPrepare(_options: OptionValues, readOnly: boolean): Promise<ReopenHandle> {
    if (readOnly === this.readOnly) return Promise.resolve({ commit() {}, abort() {} });
    let fd: number;
    try {
      fd = openFd(this.path, readOnly ? fs.constants.O_RDONLY : fs.constants.O_RDWR, "open");
    } catch (e) {
      return Promise.reject(e);
    }
    return Promise.resolve({
      commit: () => {
        const old = this.#fd;
        this.#fd = fd;
        this.readOnly = readOnly;
        fs.closeSync(old);
      },
      abort: () => fs.closeSync(fd),
    });
  }

  /** The file size as this instance knows it. */
  getLength(): number {
    return this.#length;
  }

  /** Reads with `readv` at `offset`; what lies past the end of the file reads as zeros. */
  async preadv(offset: number, bytes: number, qiov: IoVector, qiovOffset: number): Promise<void> {
    let done = 0;
    while (done < bytes) {
      let n: number;
      try {
        n = await readvAt(this.#fd, qiov.slices(qiovOffset + done, bytes - done), offset + done);
      } catch (e) {
        throw sysError(e, `Could not read '${this.path}'`, offset + done);
      }
      if (n === 0) {
        qiov.fill(qiovOffset + done, bytes - done, 0);
        return;
      }
      done += n;
    }
  }

  /** Writes with `writev` at `offset`, retrying short writes; writing past the end grows. */
  async pwritev(offset: number, bytes: number, qiov: IoVector, qiovOffset: number): Promise<void> {
    let done = 0;
    while (done < bytes) {
      let n: number;
      try {
        n = await writevAt(this.#fd, qiov.slices(qiovOffset + done, bytes - done), offset + done);
      } catch (e) {
        throw sysError(e, `Could not write '${this.path}'`, offset + done);
      }
      if (n <= 0) {
        throw new BlockError("EIO", `Could not write '${this.path}': no progress`, {
          offset: offset + done,
        });
      }
      done += n;
    }
    if (offset + bytes > this.#length) this.#length = offset + bytes;
  }

  /** `fdatasync`: the data written so far is on stable storage. */
  async flush(): Promise<void> {
    try {
      await callback((cb) => fs.fdatasync(this.#fd, cb));
    } catch (e) {
      throw sysError(e, `Could not flush '${this.path}'`);
    }
  }

  /**
   * `ftruncate` to `size`; growing with `full` (or `falloc`, done the same way for now)
   * writes zeros over the new part. Shrinking with preallocation is refused.
   */
  async truncate(size: number, _exact: boolean, prealloc: PreallocMode): Promise<void> {
    let current: number;
    try {
      current = (await fstatAsync(this.#fd)).size;
    } catch (e) {
      throw sysError(e, "Could not stat file");
    }
    await resizeFile(this.#fd, current, size, prealloc);
    this.#length = size;
  }

  /** The bytes the file occupies on its file system (`st_blocks` × 512). */
  async allocatedSize(): Promise<number> {
    try {
      return (await fstatAsync(this.#fd)).blocks * 512;
    } catch (e) {
      throw sysError(e, "Could not stat file");
    }
  }

  /** Closes the descriptor. */
  async close(): Promise<void> {
    const fd = this.#fd;
    if (fd < 0) return;
    this.#fd = -1;
    try {
      await callback((cb) => fs.close(fd, cb));
    } catch (e) {
      throw sysError(e, `Could not close '${this.path}'`);
    }
  }
}

function openFd(path: string, flags: number, verb: string, mode?: number): number {
  try {
    return fs.openSync(path, flags, mode);
  } catch (e) {
    throw sysError(e, `Could not ${verb} '${path}'`);
  }
}

/**
 * The `file` driver. Options: `filename` (required), `aio` (`threads`), `locking`
 * (`auto`, `on`, `off`; accepted and kept). `cache.direct=on` is refused: O_DIRECT needs
 * aligned buffers the threads engine cannot promise.
 *
 * @example
 * ```ts
 * import { DriverRegistry, Graph } from "@blockgraph/core";
 * import { fileDriver } from "@blockgraph/drivers";
 * const registry = new DriverRegistry([fileDriver]);
 * const dir = await Deno.makeTempDir();
 * await fileDriver.create!({ filename: `${dir}/disk.img`, size: 65536 }, registry);
 * const graph = new Graph({ registry });
 * const node = await graph.open({ driver: "file", filename: `${dir}/disk.img` }, "doc");
 * console.assert(node.getLength() === 65536);
 * await node.unref("doc");
 * await graph.closeAll();
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export const fileDriver: BlockDriver = {
  name: "file",
  kind: "protocol",
  protocolPrefix: "file",
  options: {
    filename: { type: "string", description: "File name of the image", required: true },
    aio: {
      type: "enum",
      description: "host AIO implementation (threads; io_uring and native are not there yet)",
      values: FILE_AIO_ENGINES,
      default: "threads",
    },
    locking: {
      type: "enum",
      description: "file locking mode (on/off/auto, default: auto)",
      values: FILE_LOCKING_MODES,
      default: "auto",
    },
  },
  createOptions: {
    filename: { type: "string", description: "File name of the image", required: true },
    size: { type: "size", description: "Virtual disk size", required: true },
    preallocation: {
      type: "enum",
      description: "Preallocation mode (allowed values: off, falloc, full)",
      // `metadata` is listed so that create can refuse it with QEMU's own message.
      values: ["off", "metadata", "falloc", "full"],
      default: "off",
    },
  },
  parseFilename(filename: string): OptionValues {
    return { filename: stripFilePrefix(filename) };
  },
  open(ctx: OpenContext, options: OptionValues): Promise<DriverInstance> {
    const path = options.filename as string;
    const aio = options.aio as (typeof FILE_AIO_ENGINES)[number];
    if (ctx.node.flags.cacheDirect) {
      return Promise.reject(
        new BlockError(
          "EINVAL",
          `Could not open '${path}': the '${aio}' I/O engine cannot do O_DIRECT ` +
            "(cache.direct=on); the io_uring and native engines will",
        ),
      );
    }
    let fd = -1;
    try {
      try {
        fd = openFd(path, ctx.readOnly ? fs.constants.O_RDONLY : fs.constants.O_RDWR, "open");
      } catch (e) {
        // auto-read-only: a file we may not write is opened read-only instead.
        const denied = e instanceof BlockError &&
          (e.code === "EACCES" || e.code === "EROFS" || e.code === "EPERM");
        if (!denied || !ctx.fallBackToReadOnly()) throw e;
        fd = openFd(path, fs.constants.O_RDONLY, "open");
      }
      const readOnly = ctx.readOnly;
      let st: fs.Stats;
      try {
        st = fs.fstatSync(fd);
      } catch (e) {
        throw sysError(e, "Could not stat file");
      }
      if (!st.isFile()) {
        throw new BlockError("EINVAL", `'file' driver requires '${path}' to be a regular file`);
      }
      ctx.node.filename = path;
      return Promise.resolve(
        new FileInstance(
          fd,
          path,
          st.size,
          readOnly,
          aio,
          options.locking as (typeof FILE_LOCKING_MODES)[number],
        ),
      );
    } catch (e) {
      if (fd >= 0) fs.closeSync(fd);
      return Promise.reject(e);
    }
  },
  async create(options: OptionValues, _registry: DriverRegistry): Promise<void> {
    const path = stripFilePrefix(options.filename as string);
    // Images are whole sectors, as QEMU rounds them (`create x 513` makes 1024 bytes).
    const size = Math.ceil((options.size as number) / 512) * 512;
    const prealloc = (options.preallocation ?? "off") as PreallocMode;
    if (prealloc !== "off" && prealloc !== "falloc" && prealloc !== "full") {
      throw new BlockError("ENOTSUP", `Unsupported preallocation mode: ${prealloc}`);
    }
    const fd = openFd(path, fs.constants.O_RDWR | fs.constants.O_CREAT, "create", 0o644);
    try {
      // Clear whatever the file held, then grow it the way the caller asked.
      await resizeFile(fd, 0, 0, "off");
      await resizeFile(fd, 0, size, prealloc);
    } finally {
      fs.closeSync(fd);
    }
  },
};
