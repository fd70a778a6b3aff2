/**
 * The contract every driver implements, protocol, format or filter alike, and the registry
 * the graph finds drivers in. Nothing in core knows a driver by name.
 *
 * @module
 */

import type { Transaction } from "./transaction.ts";
import type { Child } from "./child.ts";
import { BlockError } from "./errors.ts";
import type { IoVector } from "./io_vector.ts";
import type { Node } from "./node.ts";
import type { OptionSchema, OptionValues } from "./options.ts";
import type { UserObjects } from "./user_objects.ts";

/** Request flags, with QEMU's values. */
export const ReqFlags = {
  /** Copy what is read into the top layer (copy-on-read). */
  COPY_ON_READ: 0x1,
  /** The write is a write-zeroes. */
  ZERO_WRITE: 0x2,
  /** A write-zeroes may deallocate (unmap) the range. */
  MAY_UNMAP: 0x4,
  /** Force unit access: the write is on stable storage when it completes. */
  FUA: 0x10,
  /** Write compressed data (qcow2). */
  WRITE_COMPRESSED: 0x20,
  /** The write does not change what the node reads (copy-on-read, block-copy). */
  WRITE_UNCHANGED: 0x40,
  /** Serialise against every overlapping request. */
  SERIALISING: 0x80,
  /** Fail with ENOTSUP rather than fall back to a slow path. */
  NO_FALLBACK: 0x100,
  /** Read only to populate a cache; the data is thrown away. */
  PREFETCH: 0x200,
  /** Fail with EBUSY rather than wait for a serialising request. */
  NO_WAIT: 0x400,
} as const;

/** Block-status bits, with QEMU's values. */
export const BlockStatusFlags = {
  /** The range holds data (reads may return non-zero). */
  DATA: 0x01,
  /** The range reads as zeros. */
  ZERO: 0x02,
  /** `map` is the offset of the data in `file`. */
  OFFSET_VALID: 0x04,
  /** The driver says: ask `file` at `map` (the generic layer recurses). */
  RAW: 0x08,
  /** The range is allocated in this layer (set by the generic layer). */
  ALLOCATED: 0x10,
  /** The range reaches the end of the node (set by the generic layer). */
  EOF: 0x20,
  /**
   * With DATA and OFFSET_VALID: when zeros are wanted, the generic layer also asks `file` at
   * `map`, which may say the range reads as zeros (a hole under metadata preallocation). It
   * never reaches the caller.
   */
  RECURSE: 0x40,
  /** The range is stored compressed. */
  COMPRESSED: 0x80,
} as const;

/** What a driver answers for a block-status query. */
export interface BlockStatus {
  /** {@link BlockStatusFlags} bits; 0 means "not in this layer, ask the backing chain". */
  status: number;
  /** How many bytes from the queried offset share this status (at least 1). */
  pnum: number;
  /** With OFFSET_VALID: the offset of the range in `file`. */
  map?: number;
  /** With OFFSET_VALID or RAW: the node that holds the data. */
  file?: Node;
}

/**
 * Takes a read as a range of an open host file rather than as bytes in memory (see
 * {@link DriverInstance.preadHost}): `bytes` bytes of descriptor `fd` from `offset`. The
 * descriptor stays open until the returned promise settles and must not be used after it;
 * the sink only reads from it (`sendfile(2)` to a socket, say).
 */
export type HostReadSink = (fd: number, offset: number, bytes: number) => Promise<void>;

/**
 * The answer of a `preadHost` that cannot serve a read (see
 * {@link DriverInstance.preadHost}): one settled promise shared by every caller, so that
 * declining allocates nothing.
 */
export const HOST_READ_DECLINED: Promise<boolean> = Promise.resolve(false);

/** Request limits a driver declares; every field has a safe default. */
export interface BlockLimits {
  /** Offsets and lengths of requests the driver sees are multiples of this (default 1). */
  requestAlignment: number;
  /** The largest request the driver accepts, in bytes (0: no limit). */
  maxTransfer: number;
  /** Preferred transfer size, for splitting large copies (0: none). */
  optTransfer: number;
  /** Alignment of write-zeroes requests (0: requestAlignment). */
  pwriteZeroesAlignment: number;
  /** The largest write-zeroes request (0: no limit). */
  maxPwriteZeroes: number;
  /** Alignment of discard requests (0: requestAlignment). */
  pdiscardAlignment: number;
  /** The largest discard request (0: no limit). */
  maxPdiscard: number;
  /** Alignment the driver needs of buffers (1: none; O_DIRECT needs 512 or 4096). */
  memAlignment: number;
}

/** Limits used when a driver declares none. */
export const DEFAULT_LIMITS: Readonly<BlockLimits> = Object.freeze({
  requestAlignment: 1,
  maxTransfer: 0,
  optTransfer: 0,
  pwriteZeroesAlignment: 0,
  maxPwriteZeroes: 0,
  pdiscardAlignment: 0,
  maxPdiscard: 0,
  memAlignment: 1,
});

/** Preallocation modes for create and truncate. */
export type PreallocMode = "off" | "metadata" | "falloc" | "full";

/** What `info` shows about a node's format, beyond the common fields. */
export type FormatSpecificInfo = Record<string, unknown>;

/**
 * One open instance of a driver: the opaque state behind a {@link Node}. The request layer
 * calls these with requests already checked, aligned to `limits.requestAlignment` and no
 * larger than `limits.maxTransfer`. Methods a driver leaves out get the generic behaviour
 * described on each.
 */
export interface DriverInstance {
  /** The driver's request limits (defaults fill the gaps). */
  readonly limits?: Partial<BlockLimits>;
  /** {@link ReqFlags} the driver's `pwritev` handles itself (FUA); others are emulated. */
  readonly supportedWriteFlags?: number;
  /** {@link ReqFlags} the driver's `pwriteZeroes` handles itself (FUA, MAY_UNMAP). */
  readonly supportedZeroFlags?: number;

  /** The size in bytes. Drivers keep it current (truncate updates it). */
  getLength(): number;
  /**
   * Reads from the driver's VM state area (QEMU's `bdrv_load_vmstate`; see `vm_state.ts`),
   * for drivers that have one.
   */
  loadVmState?(pos: number, bytes: number, qiov: IoVector, qiovOffset: number): Promise<void>;
  /** Writes into the driver's VM state area (QEMU's `bdrv_save_vmstate`). */
  saveVmState?(pos: number, bytes: number, qiov: IoVector, qiovOffset: number): Promise<void>;
  /** Reads `bytes` bytes at `offset` into `qiov` at `qiovOffset`. */
  preadv(
    offset: number,
    bytes: number,
    qiov: IoVector,
    qiovOffset: number,
    flags: number,
  ): Promise<void>;
  /** Writes `bytes` bytes at `offset` from `qiov` at `qiovOffset`. */
  pwritev(
    offset: number,
    bytes: number,
    qiov: IoVector,
    qiovOffset: number,
    flags: number,
  ): Promise<void>;
  /**
   * Serves a read by handing `sink` the host file range that holds it, when the whole range
   * lies in one file this driver reads through unchanged and that file's pages are in the
   * page cache (so the sink's reads of it do not wait for the disk). Resolves true once the
   * sink is done, or false, having called nothing, when the range cannot be served so (the
   * caller reads it with `preadv`). The sink's own failures pass through unchanged. Left
   * out: false.
   */
  preadHost?(offset: number, bytes: number, sink: HostReadSink): Promise<boolean>;
  /**
   * Makes the range read as zeros. Throwing ENOTSUP (or leaving this out) makes the generic
   * layer write a zero buffer instead, unless NO_FALLBACK is set.
   */
  pwriteZeroes?(offset: number, bytes: number, flags: number): Promise<void>;
  /** Discards the range (a hint; reads afterwards may return anything). Left out: no-op. */
  pdiscard?(offset: number, bytes: number): Promise<void>;
  /** Makes completed writes of this layer stable. Children are flushed by the generic layer. */
  flush?(): Promise<void>;
  /**
   * Whether {@link DriverInstance.flush} only hands the writes on to another host (QEMU's
   * `bdrv_co_flush_to_os`, as its NBD client's flush): then it runs even under
   * `cache.no-flush`, which only skips flushes to this host's disk.
   */
  readonly flushesToOs?: boolean;
  /**
   * Answers allocation status for this layer only. Left out: protocols report DATA with
   * OFFSET_VALID; others report the range as RAW from their primary child.
   */
  blockStatus?(
    wantZero: boolean,
    offset: number,
    bytes: number,
  ): Promise<BlockStatus> | BlockStatus;
  /**
   * Whether a newly created image reads as zeros (QEMU's `bdrv_has_zero_init`), so that
   * `convert` can skip writing zeros into it. Left out: true; false for storage that `create`
   * only opens (an NBD export keeps its old contents).
   */
  hasZeroInit?(): boolean;
  /** Changes the size. Left out: ENOTSUP. */
  truncate?(offset: number, exact: boolean, prealloc: PreallocMode): Promise<void>;
  /** Bytes the node takes on its storage (`actual-size`); left out: the sum over children. */
  allocatedSize?(): Promise<number>;
  /** Format-specific facts for `info`. */
  formatInfo?(): FormatSpecificInfo | undefined;
  /**
   * The permissions the driver takes on `child` given its own users' cumulative `perm` and
   * `shared`. Left out: QEMU's defaults by role (see `defaultChildPerm`).
   */
  childPerm?(child: Child, role: number, perm: number, shared: number): [number, number];
  /**
   * Validates a permission change on this node; throw to refuse it (image locking). What it
   * changes outside the graph (lock bytes) it keeps or undoes with `tran`.
   */
  checkPerm?(perm: number, shared: number, tran: Transaction): void;
  /** The node entered a drained section: stop background activity. */
  drainBegin?(): void;
  /** The node left its drained section. */
  drainEnd?(): void;
  /**
   * Prepares a change of options (only those in the driver's `mutableOptions`); returns how
   * to commit or abort it.
   */
  reopenPrepare?(options: OptionValues, readOnly: boolean): Promise<ReopenHandle>;
  /** Releases every resource. Called once, after a final flush, when the refcount is zero. */
  close(): Promise<void>;
}

/** The two ends of a prepared reopen. */
export interface ReopenHandle {
  /** Makes the prepared change take effect. */
  commit(): void;
  /** Throws the prepared change away. */
  abort(): void;
}

/** What a driver's `open` gets besides its options. */
export interface OpenContext {
  /** The node being opened (its name, flags and graph). */
  readonly node: Node;
  /** Whether the node is opened read-only. */
  readonly readOnly: boolean;
  /**
   * Opens or looks up the child given in option `name` (an inline options object or a
   * node-name string) and attaches it with `role`. When the option is absent, `fallback` (the
   * options of what the image itself names, such as qcow2's external data file) is opened
   * instead, as an inline child; without one, returns `null` unless `required`.
   */
  openChild(
    name: string,
    role: number,
    required: boolean,
    fallback?: OptionValues,
  ): Promise<Child | null>;
  /** Attaches an existing node as a child. */
  attachChild(node: Node, name: string, role: number): Child;
  /**
   * Opens a node that the image names (a backing file in its header) as `graph.open` does,
   * with `holder` holding the reference; while it opens, its `openingFor` is this node.
   */
  openNamed(options: OptionValues, holder: string): Promise<Node>;
  /**
   * How the child option `name` was given, before `openChild` consumes it: `absent` (left
   * out: a format may open what its image names, such as the header's backing file), `none`
   * (`null`: explicitly no child, as `"backing": null`), or `given`.
   */
  childOption(name: string): "absent" | "none" | "given";
  /**
   * With `auto-read-only=on`, turns the node read-only when read-write access cannot be had
   * (a read-only file, a read-only export). Returns false, changing nothing, when the user
   * did not allow it.
   */
  fallBackToReadOnly(): boolean;
}

/** What kind of node a driver makes. */
export type DriverKind = "protocol" | "format" | "filter";

/**
 * A driver: the static description and the `open` factory. Register it in a
 * {@link DriverRegistry}.
 */
export interface BlockDriver {
  /** The driver name as in `driver=...` (`file`, `raw`, `null-co`). */
  readonly name: string;
  /** Protocol, format or filter. */
  readonly kind: DriverKind;
  /** For protocols: the filename prefix it answers to (`nbd` for `nbd://...`). */
  readonly protocolPrefix?: string;
  /** The options the driver takes, beyond the common ones and its children. */
  readonly options: OptionSchema;
  /** Child option names (`file`, `backing`, `image`) the driver opens itself. */
  readonly childOptions?: readonly string[];
  /** Options a reopen may change. */
  readonly mutableOptions?: readonly string[];
  /** Whether the driver can have a COW backing child. */
  readonly supportsBacking?: boolean;
  /** Whether the filtered child of this filter is named `backing` rather than `file`. */
  readonly filteredChildIsBacking?: boolean;
  /** Whether the driver's data is the same as its primary child's (raw without offset). */
  readonly hasDefaultBlockStatus?: boolean;
  /** Scores how likely `header` (the first bytes of a file) is in this format (0: not). */
  probe?(header: Uint8Array, filename: string): number;
  /** Parses a protocol filename (`nbd://host/name`) into options. */
  parseFilename?(filename: string): OptionValues;
  /**
   * The options that change what the node reads (QEMU's `strong_runtime_opts`): given, they
   * keep a format node from taking its file's name, and they make up its `json:` filename.
   * A name ending in `.` stands for every option under it (`server.`).
   */
  readonly strongOptions?: readonly string[];
  /**
   * The node's exact filename, from the options its `json:` filename would hold (`options`),
   * or `""` when none says it (QEMU's `bdrv_refresh_filename` of a driver). Left out: a
   * protocol keeps the filename it was opened with, a format takes its file's.
   */
  exactFilename?(node: Node, options: OptionValues): string;
  /**
   * The directory relative backing file names are taken from (QEMU's `bdrv_dirname` of a
   * driver); throws when the node has none. Left out: its primary child's, or its
   * filename's.
   */
  dirname?(node: Node): string;
  /** Opens an instance. Options are validated and converted by the schema already. */
  open(ctx: OpenContext, options: OptionValues): Promise<DriverInstance>;
  /**
   * Creates an image (`img create`); absent for drivers that cannot create. A format driver
   * passes `ctx` on to the protocol drivers that create its files.
   */
  create?(options: OptionValues, registry: DriverRegistry, ctx?: CreateContext): Promise<void>;
  /** The options `create` takes. */
  readonly createOptions?: OptionSchema;
}

/**
 * What an image's creation may use besides its options: where its warnings go (QEMU's
 * `warn_report`, which creation goes on after) and the user-creatable objects (secrets) its
 * options name.
 */
export interface CreateContext {
  /** Reports a warning; creation goes on. Left out: warnings go to standard error. */
  warn?(message: string): void;
  /** The user-creatable objects by id (`--object`), for options that name one. */
  objects?: UserObjects;
}

/** Reports `message` through `ctx`, or on standard error without one (`warning: ...`). */
export function createWarning(ctx: CreateContext | undefined, message: string): void {
  if (ctx?.warn) ctx.warn(message);
  else console.error(`warning: ${message}`);
}

/** A set of drivers by name. Graphs look drivers up here; nothing else branches on names. */
export class DriverRegistry {
  #drivers = new Map<string, BlockDriver>();

  /** Creates a registry holding `drivers`. */
  constructor(drivers: readonly BlockDriver[] = []) {
    for (const d of drivers) this.register(d);
  }

  /** Adds a driver; a second driver of the same name is refused. */
  register(driver: BlockDriver): void {
    if (this.#drivers.has(driver.name)) {
      throw new BlockError("EEXIST", `Driver '${driver.name}' is already registered`);
    }
    this.#drivers.set(driver.name, driver);
  }

  /** The driver called `name`, or undefined. */
  find(name: string): BlockDriver | undefined {
    return this.#drivers.get(name);
  }

  /** The driver called `name`; throws "Unknown driver" when there is none. */
  get(name: string): BlockDriver {
    const d = this.#drivers.get(name);
    if (!d) throw new BlockError("ENOENT", `Unknown driver '${name}'`);
    return d;
  }

  /** The protocol driver for a filename like `nbd://...`, or the `file` driver for paths. */
  protocolFor(filename: string): BlockDriver {
    const m = /^([a-zA-Z0-9.+-]+):/.exec(filename);
    if (m) {
      const prefix = m[1]!.split("+")[0]!;
      for (const d of this.#drivers.values()) {
        if (d.kind === "protocol" && d.protocolPrefix === prefix) return d;
      }
      if (prefix !== "file") throw new BlockError("ENOENT", `Unknown protocol '${prefix}'`);
    }
    return this.get("file");
  }

  /** Every registered driver. */
  all(): BlockDriver[] {
    return [...this.#drivers.values()];
  }
}
