/**
 * The `raw` format driver: the image is the bytes of its `file` child, optionally a window of
 * them (`offset`, `size`). Without a window it behaves as a filter; with one it maps requests
 * into the window and refuses to leave it.
 *
 * @module
 */

import {
  type BlockDriver,
  BlockError,
  type BlockStatus,
  BlockStatusFlags,
  type Child,
  ChildRole,
  type CreateContext,
  type DriverInstance,
  type DriverRegistry,
  HOST_READ_DECLINED,
  type HostReadSink,
  type IoVector,
  type Node,
  type OpenContext,
  type OptionValues,
  type PreallocMode,
  type ReopenHandle,
  ReqFlags,
  validateOptions,
} from "@blockgraph/core";

/** Sizes given for a window must be whole sectors, so rounding never leaks past it. */
const SECTOR_SIZE = 512;

/** The window a raw node shows of its file. */
interface RawWindow {
  offset: number;
  /** The fixed size, or `undefined`: up to the end of the file. */
  size: number | undefined;
}

/** Checks a window against the file's length, with QEMU's messages. */
function checkWindow(window: RawWindow, fileLength: number): void {
  const { offset, size } = window;
  if (offset > fileLength) {
    throw new BlockError(
      "EINVAL",
      `Offset (${offset}) cannot be greater than size of the containing file (${fileLength})`,
    );
  }
  if (size !== undefined && fileLength - offset < size) {
    throw new BlockError(
      "EINVAL",
      `The sum of offset (${offset}) and size (${size}) has to be smaller or equal to the ` +
        `actual size of the containing file (${fileLength})`,
    );
  }
  if (size !== undefined && size % SECTOR_SIZE !== 0) {
    throw new BlockError("EINVAL", `Specified size is not multiple of ${SECTOR_SIZE}`);
  }
}

function windowOf(options: OptionValues): RawWindow {
  return {
    offset: (options.offset as number | undefined) ?? 0,
    size: options.size as number | undefined,
  };
}

/** An open `raw` node. */
export class RawInstance implements DriverInstance {
  /** WRITE_UNCHANGED always; FUA when the file handles it. */
  readonly supportedWriteFlags: number;
  /** WRITE_UNCHANGED always; FUA, MAY_UNMAP and NO_FALLBACK when the file handles them. */
  readonly supportedZeroFlags: number;
  readonly #file: Child;
  #offset: number;
  #size: number | undefined;

  /** Wraps the `file` child with a checked window; use the driver's `open`. */
  constructor(file: Child, window: RawWindow) {
    this.#file = file;
    this.#offset = window.offset;
    this.#size = window.size;
    const inst = file.node!.instance!;
    this.supportedWriteFlags = ReqFlags.WRITE_UNCHANGED |
      ((inst.supportedWriteFlags ?? 0) & ReqFlags.FUA);
    this.supportedZeroFlags = ReqFlags.WRITE_UNCHANGED |
      ((inst.supportedZeroFlags ?? 0) &
        (ReqFlags.FUA | ReqFlags.MAY_UNMAP | ReqFlags.NO_FALLBACK));
  }

  /** Where the image starts in the file. */
  get offset(): number {
    return this.#offset;
  }

  /** The fixed size, or `undefined` when the image runs to the end of the file. */
  get fixedSize(): number | undefined {
    return this.#size;
  }

  #fileNode(): Node {
    return this.#file.node!;
  }

  /** The window's size, bounded by what the file still has beyond `offset`. */
  getLength(): number {
    const avail = this.#file.node!.getLength() - this.#offset;
    if (avail <= 0) return 0;
    return this.#size === undefined ? avail : Math.min(this.#size, avail);
  }

  /** With a fixed size: `null` when the request fits, else the error QEMU gives. */
  #outside(offset: number, bytes: number, write: boolean): Promise<never> | null {
    const size = this.#size;
    if (size === undefined || (offset <= size && bytes <= size - offset)) return null;
    return Promise.reject(
      new BlockError(
        write ? "ENOSPC" : "EINVAL",
        `Request at offset ${offset} (${bytes} bytes) is outside the ${size}-byte raw image`,
        { offset },
      ),
    );
  }

  /** Reads from the file at `offset` + the window's start. */
  preadv(
    offset: number,
    bytes: number,
    qiov: IoVector,
    qiovOffset: number,
    flags: number,
  ): Promise<void> {
    return this.#outside(offset, bytes, false) ??
      this.#fileNode().preadv(offset + this.#offset, bytes, qiov, qiovOffset, flags);
  }

  /** Serves a read as the file's range at `offset` + the window's start, where the file can. */
  preadHost(offset: number, bytes: number, sink: HostReadSink): Promise<boolean> {
    if (this.#outside(offset, bytes, false) !== null) return HOST_READ_DECLINED;
    return this.#fileNode().preadHost(offset + this.#offset, bytes, sink);
  }

  /** Writes to the file at `offset` + the window's start. */
  pwritev(
    offset: number,
    bytes: number,
    qiov: IoVector,
    qiovOffset: number,
    flags: number,
  ): Promise<void> {
    return this.#outside(offset, bytes, true) ??
      this.#fileNode().pwritev(offset + this.#offset, bytes, qiov, qiovOffset, flags);
  }

  /** Passes write-zeroes down to the file. */
  pwriteZeroes(offset: number, bytes: number, flags: number): Promise<void> {
    return this.#outside(offset, bytes, true) ??
      this.#fileNode().pwriteZeroes(offset + this.#offset, bytes, flags);
  }

  /** As the file's: a raw image is zero where its file is. */
  hasZeroInit(): boolean {
    return this.#fileNode().instance?.hasZeroInit?.() ?? true;
  }

  /** Passes discard down to the file. */
  pdiscard(offset: number, bytes: number): Promise<void> {
    return this.#outside(offset, bytes, true) ??
      this.#fileNode().pdiscard(offset + this.#offset, bytes);
  }

  /** "Ask the file": RAW, mapped to `offset` + the window's start. */
  blockStatus(_wantZero: boolean, offset: number, bytes: number): BlockStatus {
    return {
      status: BlockStatusFlags.RAW | BlockStatusFlags.OFFSET_VALID,
      pnum: bytes,
      map: offset + this.#offset,
      file: this.#fileNode(),
    };
  }

  /** Resizes the file to the window's start + `size`; refused for a fixed-size window. */
  truncate(size: number, exact: boolean, prealloc: PreallocMode): Promise<void> {
    if (this.#size !== undefined) {
      return Promise.reject(new BlockError("ENOTSUP", "Cannot resize fixed-size raw disks"));
    }
    if (size > Number.MAX_SAFE_INTEGER - this.#offset) {
      return Promise.reject(
        new BlockError("EINVAL", "Disk size too large for the chosen offset"),
      );
    }
    return this.#fileNode().truncate(size + this.#offset, exact, prealloc);
  }

  /** A new `offset` and `size`, checked against the file before anything changes. */
  reopenPrepare(options: OptionValues): Promise<ReopenHandle> {
    const window = windowOf(options);
    try {
      checkWindow(window, this.#fileNode().getLength());
    } catch (e) {
      return Promise.reject(e);
    }
    return Promise.resolve({
      commit: () => {
        this.#offset = window.offset;
        this.#size = window.size;
      },
      abort: () => {},
    });
  }

  /** Nothing of its own to release; the graph drops the child. */
  close(): Promise<void> {
    return Promise.resolve();
  }
}

/**
 * The `raw` format driver. Options: `offset` (default 0) and `size` (default: to the end of
 * the file); child `file` (required).
 *
 * @example
 * ```ts
 * import { DriverRegistry, Graph } from "@blockgraph/core";
 * import { memoryDriver, rawDriver } from "@blockgraph/drivers";
 * const graph = new Graph({ registry: new DriverRegistry([memoryDriver, rawDriver]) });
 * const node = await graph.open({
 *   driver: "raw",
 *   offset: 512,
 *   size: 1024,
 *   file: { driver: "memory", size: 4096 },
 * }, "doc");
 * console.assert(node.getLength() === 1024);
 * await node.unref("doc");
 * await graph.closeAll();
 * ```
 */
export const rawDriver: BlockDriver = {
  name: "raw",
  kind: "format",
  options: {
    offset: { type: "size", description: "offset in the disk where the image starts" },
    size: { type: "size", description: "virtual disk size" },
  },
  childOptions: ["file"],
  mutableOptions: ["offset", "size"],
  strongOptions: ["offset", "size"],
  createOptions: {
    filename: { type: "string", description: "File name of the image", required: true },
    size: { type: "size", description: "Virtual disk size", required: true },
    preallocation: {
      type: "enum",
      description: "Preallocation mode, passed to the protocol (off, falloc, full)",
      values: ["off", "metadata", "falloc", "full"],
    },
  },
  /** The smallest positive score: raw is chosen only when no other format matches. */
  probe(): number {
    return 1;
  },
  async open(ctx: OpenContext, options: OptionValues): Promise<DriverInstance> {
    const window = windowOf(options);
    // Without offset and size the driver behaves very much like a filter; with either, not.
    const role = window.offset !== 0 || window.size !== undefined
      ? ChildRole.DATA | ChildRole.PRIMARY
      : ChildRole.FILTERED | ChildRole.PRIMARY;
    const file = (await ctx.openChild("file", role, true))!;
    checkWindow(window, file.node!.getLength());
    return new RawInstance(file, window);
  },
  /**
   * Creates the file through the protocol driver its filename names, which takes every
   * option (raw's own are the protocol's too).
   */
  async create(
    options: OptionValues,
    registry: DriverRegistry,
    ctx?: CreateContext,
  ): Promise<void> {
    const filename = options.filename as string;
    const proto = registry.protocolFor(filename);
    if (!proto.create) {
      throw new BlockError(
        "ENOTSUP",
        `Protocol driver '${proto.name}' does not support image creation`,
      );
    }
    const given: OptionValues = {};
    for (const [k, v] of Object.entries(options)) if (v !== undefined) given[k] = v;
    const protoOptions = validateOptions(
      proto.createOptions ?? {},
      given,
      `Protocol driver '${proto.name}'`,
    );
    await proto.create(protoOptions, registry, ctx);
  },
};
