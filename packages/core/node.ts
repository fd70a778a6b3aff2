/**
 * Nodes: open instances of drivers, joined by child edges into the graph.
 *
 * @module
 */

import { type Child, ChildRole } from "./child.ts";
import type { ChildParent } from "./child.ts";
import {
  type BlockDriver,
  type BlockLimits,
  type BlockStatus,
  DEFAULT_LIMITS,
  type DriverInstance,
  type HostReadSink,
  type PreallocMode,
} from "./driver.ts";
import type { DirtyBitmap } from "./dirty_bitmap.ts";
import { BlockError } from "./errors.ts";
import type { Graph } from "./graph.ts";
import { IoVector } from "./io_vector.ts";
import type { OptionValues } from "./options.ts";
import { blockStatus, blockStatusNow } from "./block_status.ts";
import * as req from "./request.ts";
import { TrackedRequests } from "./tracked_requests.ts";

/** Names a reference holder for messages and the ledger. */
export function holderLabel(holder: string | Child): string {
  return typeof holder === "string" ? holder : holder.describe();
}

/** Options every node has, whatever its driver. */
export interface NodeFlags {
  /** Opened read-only. */
  readOnly: boolean;
  /** Fall back to read-only if read-write cannot be had (`auto-read-only`). */
  autoReadOnly: boolean;
  /** Bypass the host page cache (`cache.direct`). */
  cacheDirect: boolean;
  /** Ignore flush requests (`cache.no-flush`). */
  cacheNoFlush: boolean;
  /** Whether discard requests are passed down (`discard=unmap`) or dropped (`ignore`). */
  discard: "ignore" | "unmap";
  /** Turn all-zero writes into write-zeroes (`on`), deallocating where possible (`unmap`). */
  detectZeroes: "off" | "on" | "unmap";
  /** Share every permission with other users, even those it would not (`force-share`). */
  forceShare: boolean;
  /**
   * No guest data will be read or written: the node is opened for its metadata only, as
   * QEMU's `BDRV_O_NO_IO` (which `qemu-img info` uses). A format may then open what it could
   * not serve (a qcow2 whose data is encrypted). Not an option: see `Graph.open`.
   */
  noIo: boolean;
}

/** Default flags of a node opened with no common options. */
export const DEFAULT_FLAGS: Readonly<NodeFlags> = Object.freeze({
  readOnly: false,
  autoReadOnly: false,
  cacheDirect: false,
  cacheNoFlush: false,
  discard: "ignore",
  detectZeroes: "off",
  forceShare: false,
  noIo: false,
});

/**
 * One open instance of a driver. A node is alive while its reference count is above zero;
 * {@link Node.unref} to zero closes it. There is no public delete.
 *
 * The I/O methods (`preadv`, `pwritev`, ...) are the generic request layer: they align,
 * split, serialise and count requests before the driver sees them.
 */
export class Node implements ChildParent {
  /** The graph this node belongs to. */
  readonly graph: Graph;
  /** The node name, user-given or generated (`#block001`). */
  readonly name: string;
  /** Whether the name was generated. */
  readonly autoNamed: boolean;
  /** The driver this node is an instance of. */
  readonly driver: BlockDriver;
  /** The driver's state; `null` once closed. */
  instance: DriverInstance | null = null;
  /** The driver options the node was opened with (after validation). */
  options: OptionValues;
  /** Common options. */
  flags: NodeFlags;
  /** Edges to this node's children. */
  readonly children: Child[] = [];
  /** Edges from this node's parents. */
  readonly parents: Child[] = [];
  /** The resolved request limits. */
  limits: BlockLimits = { ...DEFAULT_LIMITS };
  /** Cumulative permissions taken by the parents (kept by the permission refresh). */
  perm = 0;
  /** Cumulative permissions shared by the parents. */
  shared = 0xf;
  /**
   * The parent this node was opened under as an inline child, and with what role: a reopen
   * of the parent passes inherited options (read-only) down to it.
   */
  inheritsFrom: { parent: Node; role: number } | null = null;
  /**
   * While this node opens as a file another image names (a backing file in a header), the
   * node whose open opened it; `null` otherwise. An image can follow the chain up to refuse
   * a loop of images naming each other, which would otherwise open forever.
   */
  openingFor: Node | null = null;
  /** The common options (read-only, discard, ...) given explicitly when it was opened. */
  explicitCommon: OptionValues = {};
  /**
   * The node's filename, for `info` and messages: a plain one, or `json:{...}` of its options
   * when no plain one says what the node reads (see `refreshFilename`).
   */
  filename = "";
  /** The plain filename that opens this node again, or `""` when there is none. */
  exactFilename = "";
  /** The options its `json:` filename is made of: strong options, children nested. */
  fullOpenOptions: OptionValues = {};
  /**
   * The driver options as given when it was opened, before validation and without its
   * children, flattened with dotted keys (`server.path`) as QEMU keeps `bs->options`; its
   * filename is made of them.
   */
  givenOptions: OptionValues = {};
  /**
   * The backing file the image names, or, once opened from that name, the backing node's
   * filename (QEMU's `auto_backing_file`); `""` when it names none. A backing child with
   * another filename was given otherwise, and the node's filename must say so.
   */
  autoBackingFile = "";
  /** The requests in flight in this node's request layer. */
  inFlight = 0;
  /** How many drained sections this node is in. */
  quiesceCounter = 0;
  /** Writes that must not overlap (read-modify-write, copy-on-write). */
  readonly tracked: TrackedRequests = new TrackedRequests();
  /** Incremented as every write completes; flush compares it to skip needless flushes. */
  writeGen = 0;
  /** The write generation at the last completed flush. */
  flushedGen = 0;
  /** The flush running on this node, if any (flushes are serialised per node). */
  activeFlush: Promise<void> | null = null;
  /** The dirty bitmaps attached to this node; enabled ones mark every completed write. */
  readonly dirtyBitmaps: DirtyBitmap[] = [];
  /** Fast-path writes in flight (untracked: a serialising request waits for all of them). */
  fastWrites = 0;
  #fastWaiters: (() => void)[] | null = null;
  #refcount = 1;
  /** Bound completion callbacks, made once so requests allocate no closures. */
  readonly ioDone: () => void;
  /** Bound failure callback: counts the request done and rethrows as a BlockError. */
  readonly ioFail: (err: unknown) => never;

  /** Bound completion callback of fast-path writes. */
  readonly writeDone: () => void;
  /** Bound failure callback of fast-path writes. */
  readonly writeFail: (err: unknown) => never;

  /** Created by the graph only; see `Graph.open`. */
  constructor(
    graph: Graph,
    name: string,
    autoNamed: boolean,
    driver: BlockDriver,
    options: OptionValues,
    flags: NodeFlags,
  ) {
    this.graph = graph;
    this.name = name;
    this.autoNamed = autoNamed;
    this.driver = driver;
    this.options = options;
    this.flags = flags;
    this.ioDone = () => {
      if (--this.inFlight === 0) this.graph.notifyIdle();
    };
    this.ioFail = (err: unknown): never => {
      if (--this.inFlight === 0) this.graph.notifyIdle();
      throw BlockError.from(err, { node: this.name });
    };
    this.writeDone = () => {
      this.writeGen++;
      if (--this.fastWrites === 0 && this.#fastWaiters) this.#wakeFastWaiters();
      if (--this.inFlight === 0) this.graph.notifyIdle();
    };
    this.writeFail = (err: unknown): never => {
      this.writeDone();
      throw BlockError.from(err, { node: this.name, op: "write" });
    };
  }

  /** Resolves when no fast-path write is in flight; `null` when none is now. */
  waitFastWrites(): Promise<void> | null {
    if (this.fastWrites === 0) return null;
    return new Promise((resolve) => (this.#fastWaiters ??= []).push(resolve));
  }

  #wakeFastWaiters(): void {
    const w = this.#fastWaiters!;
    this.#fastWaiters = null;
    for (const f of w) f();
  }

  /** The current reference count. */
  get refcount(): number {
    return this.#refcount;
  }

  /** Whether the node is still open. */
  get isOpen(): boolean {
    return this.instance !== null;
  }

  /** Whether the node may be written (not read-only). */
  get writable(): boolean {
    return !this.flags.readOnly;
  }

  /** The `file` child, if any. */
  get file(): Child | null {
    return this.children.find((c) => c.name === "file") ?? null;
  }

  /** The `backing` child, if any. */
  get backing(): Child | null {
    return this.children.find((c) => c.name === "backing") ?? null;
  }

  /** The child holding this node's data: its filtered child, or its primary one. */
  get primaryChild(): Child | null {
    return this.children.find((c) => c.role & ChildRole.FILTERED) ??
      this.children.find((c) => c.role & ChildRole.PRIMARY) ?? null;
  }

  /** The filtered child, for filters; `null` for other drivers. */
  get filteredChild(): Child | null {
    return this.children.find((c) => c.role & ChildRole.FILTERED) ?? null;
  }

  /** The COW (backing) child, if any. */
  get cowChild(): Child | null {
    return this.children.find((c) => c.role & ChildRole.COW) ?? null;
  }

  /**
   * The node whose data shows through where this one holds none: the COW child, or the
   * child a filter passes through (QEMU's `bdrv_filter_or_cow_bs`); `null` at the bottom.
   */
  get layerBelow(): Node | null {
    return this.cowChild?.node ?? this.filteredChild?.node ?? null;
  }

  /**
   * Takes a reference. `holder` says who holds it, for the ledger: a name, or the child edge
   * that holds it.
   */
  ref(holder: string | Child = "anonymous"): void {
    if (this.#refcount <= 0) {
      throw new BlockError("EINVAL", `Node '${this.name}' is already closed`);
    }
    this.#refcount++;
    this.graph.ledgerAdd(this, holder);
  }

  /**
   * Drops a reference. When the count reaches zero the node is unlinked from the graph and
   * closed (flushed, driver closed, children released); the returned promise settles when
   * that is done.
   */
  unref(holder: string | Child = "anonymous"): Promise<void> {
    if (this.#refcount <= 0) {
      return Promise.reject(new BlockError("EINVAL", `Node '${this.name}' is already closed`));
    }
    if (this.#refcount - 1 < this.parents.length) {
      // Every parent edge holds a reference: this one was never taken. Change nothing.
      return Promise.reject(
        new BlockError(
          "EINVAL",
          `Node '${this.name}' has no reference to drop for ${holderLabel(holder)}: its ` +
            `${this.parents.length} parent edge(s) hold all ${this.#refcount}`,
        ),
      );
    }
    this.graph.ledgerRemove(this, holder);
    if (--this.#refcount > 0) return Promise.resolve();
    return this.graph.deleteNode(this);
  }

  /** The size in bytes; ENOMEDIUM when closed. */
  getLength(): number {
    const inst = this.instance;
    if (!inst) {
      throw new BlockError("ENOMEDIUM", `Node '${this.name}' is closed`, { node: this.name });
    }
    return inst.getLength();
  }

  /** Reads `bytes` bytes at `offset` into `qiov` at `qiovOffset`. */
  preadv(offset: number, bytes: number, qiov: IoVector, qiovOffset = 0, flags = 0): Promise<void> {
    return req.preadv(this, offset, bytes, qiov, qiovOffset, flags);
  }

  /**
   * Serves a read through `sink` as a host file range, where the driver can; resolves false,
   * having called nothing, where it cannot (see {@link DriverInstance.preadHost}).
   */
  preadHost(offset: number, bytes: number, sink: HostReadSink): Promise<boolean> {
    return req.preadHost(this, offset, bytes, sink);
  }

  /** Writes `bytes` bytes at `offset` from `qiov` at `qiovOffset`. */
  pwritev(offset: number, bytes: number, qiov: IoVector, qiovOffset = 0, flags = 0): Promise<void> {
    return req.pwritev(this, offset, bytes, qiov, qiovOffset, flags);
  }

  /** Reads into `buf` from `offset` (a convenience over {@link Node.preadv}). */
  read(offset: number, buf: Uint8Array, flags = 0): Promise<void> {
    return req.preadv(this, offset, buf.length, IoVector.of(buf), 0, flags);
  }

  /** Writes `buf` at `offset` (a convenience over {@link Node.pwritev}). */
  write(offset: number, buf: Uint8Array, flags = 0): Promise<void> {
    return req.pwritev(this, offset, buf.length, IoVector.of(buf), 0, flags);
  }

  /** Makes the range read as zeros. */
  pwriteZeroes(offset: number, bytes: number, flags = 0): Promise<void> {
    return req.pwriteZeroes(this, offset, bytes, flags);
  }

  /** Discards the range (when the node passes discards down). */
  pdiscard(offset: number, bytes: number): Promise<void> {
    return req.pdiscard(this, offset, bytes);
  }

  /** Flushes this node and then every child it writes to. */
  flush(): Promise<void> {
    return req.flush(this);
  }

  /** Allocation status of this layer at `offset` (see {@link BlockStatus}). */
  blockStatus(offset: number, bytes: number, wantZero = true): Promise<BlockStatus> {
    return blockStatus(this, offset, bytes, wantZero);
  }

  /**
   * {@link Node.blockStatus} at once when every layer it asks has the answer at hand (a
   * cached qcow2 L2 table), else its promise; throws what it finds wrong at once. For walks
   * over many small extents.
   */
  blockStatusNow(
    offset: number,
    bytes: number,
    wantZero = true,
  ): BlockStatus | Promise<BlockStatus> {
    return blockStatusNow(this, offset, bytes, wantZero);
  }

  /** Resizes the node to `size` bytes. */
  truncate(size: number, exact = true, prealloc: PreallocMode = "off"): Promise<void> {
    return req.truncate(this, size, exact, prealloc);
  }

  // ---- ChildParent: this node as the parent of its children ----

  /** Nodes are parents of kind "node". */
  readonly parentKind = "node" as const;

  /** Describes the node as a parent: `node 'qcow0'`. */
  parentDescription(): string {
    return `node '${this.name}'`;
  }

  /** How a user makes this node let go of a child. */
  releaseHint(): string {
    return `reopen or delete node '${this.name}'`;
  }

  /** A child was drained: this node and everything above it quiesce too. */
  childDrainedBegin(_child: Child): void {
    this.graph.drainBeginNoPoll(this);
  }

  /** A child's drained section ended. */
  childDrainedEnd(_child: Child): void {
    this.graph.drainEnd(this);
  }

  /** Whether this node or anything above it still has requests in flight. */
  childDrainedPoll(_child: Child): boolean {
    return this.graph.drainPoll(this);
  }

  /** A child changed size: filters pass it up (a format's size does not follow its file). */
  childResized(_child: Child): void {
    // A format node's size does not follow its file's; filters follow their child.
    if (this.filteredChild) { for (const p of this.parents) p.parent.childResized?.(p); }
  }

  /** Describes the node for debugging: `node 'disk0' (raw)`. */
  toString(): string {
    return `node '${this.name}' (${this.driver.name})`;
  }
}
