/**
 * Backends: the device-facing handle, split from the graph as QEMU splits BlockBackend from
 * BlockDriverState. A consumer (device model, export, CLI) holds a Backend and never a node,
 * so the whole tree under it can be swapped (media change, mirror pivot) safely.
 *
 * @module
 */

import { Child, type ChildParent, ChildRole } from "./child.ts";
import {
  type BlockStatus,
  HOST_READ_DECLINED,
  type HostReadSink,
  type PreallocMode,
  ReqFlags,
} from "./driver.ts";
import { BlockError } from "./errors.ts";
import type { Graph } from "./graph.ts";
import { attachEdge } from "./graph_change.ts";
import { IoVector } from "./io_vector.ts";
import type { Node } from "./node.ts";
import { changeEdgePerm, Perm } from "./permissions.ts";
import { changeMedium, eject, insertMedium, removeMedium, Tray } from "./tray.ts";
import type { DeviceOps, RootListener } from "./device_ops.ts";
import { errorAction, type ErrorPolicy, ioErrorEventData, type IoStatus } from "./error_policy.ts";
import { checkRequest } from "./backend_check.ts";
import { promised } from "./block_status.ts";

/** Options of a new Backend. */
export interface BackendOptions {
  /** A monitor-visible name (QEMU's `-drive id=`); it shares the namespace with nodes. */
  name?: string;
  /** Permissions the Backend takes on its root (default: consistent read). */
  perm?: number;
  /** Permissions it lets others take (default: all). */
  shared?: number;
}

/** Request kinds; QMP calls errors of zeroes, discard and flush "write" errors. */
const Op = { Read: 0, Write: 1, Zeroes: 2, Discard: 3, Flush: 4 } as const;
type Op = (typeof Op)[keyof typeof Op];
const OP_NAMES = ["read", "write", "write", "write", "write"] as const;

/**
 * The device-facing handle on a graph. It owns the `root` child (or none: an empty drive),
 * checks every request (medium present, tray closed, range inside the disk), applies the
 * error policy, keeps the I/O status, and tells its device about media events. With no
 * medium every request fails with ENOMEDIUM; it never touches a node it no longer holds.
 */
export class Backend implements ChildParent {
  /** The graph this Backend belongs to. */
  readonly graph: Graph;
  /** The monitor-visible name, or "" for an anonymous Backend. */
  readonly name: string;
  /** The root edge, or `null` when the drive is empty. */
  root: Child | null = null;
  /** Permissions taken on the root. */
  perm: number;
  /** Permissions shared with other users of the root. */
  shared: number;
  /** Requests inside the Backend (not counting those queued by a drained section). */
  inFlight = 0;
  /** How many drained sections cover this Backend. */
  quiesceCounter = 0;
  /** When false, every write gets FUA (the guest turned its write cache off). */
  enableWriteCache = true;
  /** Let writes go past the end (image creation writes headers beyond a zero size). */
  allowWriteBeyondEof = false;
  /** Don't queue requests during drained sections (jobs and exports that drain themselves). */
  disableRequestQueuing = false;
  /** The I/O status after errors with the `stop` action. */
  iostatus: IoStatus = "ok";
  #readPolicy: ErrorPolicy = "report";
  #writePolicy: ErrorPolicy = "report";
  #policySet = false;
  #device: { id: string; ops: DeviceOps } | null = null;
  /**
   * The drive's tray and lock: their state, the guest's moves (`lock`, `move`) and QMP's
   * blockdev-open-tray and -close-tray (`open`, `close`).
   */
  readonly tray: Tray;
  #stopped = false;
  #parked: (() => void)[] = [];
  #queued: (() => void)[] = [];
  #refcount = 1;
  #removeListeners = new Set<RootListener>();
  #insertListeners = new Set<RootListener>();
  readonly #done: () => void;
  readonly #fail: (e: unknown) => never;

  /** Created by `Graph.createBackend` only. */
  constructor(graph: Graph, options: BackendOptions) {
    this.graph = graph;
    this.name = options.name ?? "";
    this.perm = options.perm ?? Perm.CONSISTENT_READ;
    this.shared = options.shared ?? Perm.ALL;
    this.tray = new Tray({
      name: this.name,
      device: () => this.#device,
      describeName: () => this.describeName(),
      emit: (event, data) => this.graph.events.emit(event, data),
    });
    this.#done = () => {
      if (--this.inFlight === 0) this.graph.notifyIdle();
    };
    this.#fail = (e: unknown): never => {
      if (--this.inFlight === 0) this.graph.notifyIdle();
      throw BlockError.from(e, { node: this.name });
    };
  }

  // ---------------------------------------------------------------- lifetime and device

  /** Takes a reference on the Backend. */
  ref(): void {
    this.#refcount++;
  }

  /** Drops a reference; at zero the root is removed and the Backend forgotten. */
  async unref(): Promise<void> {
    if (--this.#refcount > 0) return;
    await this.removeRoot();
    this.graph.forgetBackend(this);
  }

  /**
   * Attaches the device model. Exactly one device may be attached (EBUSY otherwise); it
   * holds a reference. A device's default error policy is QEMU's: rerror=report,
   * werror=enospc, unless a policy was set already.
   */
  attachDevice(id: string, ops: DeviceOps): void {
    if (this.#device) {
      throw new BlockError(
        "EBUSY",
        `Block device '${this.describeName()}' already has a device attached`,
      );
    }
    this.#device = { id, ops };
    this.ref();
    if (!this.#policySet) this.#writePolicy = "enospc";
  }

  /** Detaches the device model and drops its reference. */
  async detachDevice(): Promise<void> {
    if (!this.#device) return;
    this.#device = null;
    this.tray.reset();
    await this.unref();
  }

  /** The attached device's id, or "" when none is attached. */
  get deviceId(): string {
    return this.#device?.id ?? "";
  }

  /** Names the Backend in messages: its name, else its device's id. */
  describeName(): string {
    return this.name || this.#device?.id || "";
  }

  // ---------------------------------------------------------------- the root

  /** The root node, or null when empty. */
  get node(): Node | null {
    return this.root?.node ?? null;
  }

  /** Whether a medium is inserted (a root exists), whatever the tray says. */
  get isInserted(): boolean {
    return this.root !== null;
  }

  /** Whether requests can be served: a root exists and the tray is closed. */
  get isAvailable(): boolean {
    return this.root !== null && !this.tray.isOpen;
  }

  /** Calls `fn` when the root is about to be removed (exports and jobs react). */
  onRemove(fn: RootListener): () => void {
    this.#removeListeners.add(fn);
    return () => this.#removeListeners.delete(fn);
  }

  /** Calls `fn` after a root was inserted. */
  onInsert(fn: RootListener): () => void {
    this.#insertListeners.add(fn);
    return () => this.#insertListeners.delete(fn);
  }

  /**
   * Makes `node` the root (QEMU's blk_insert_bs): takes a reference and attaches the `root`
   * edge with the Backend's permissions. A permission conflict throws (EPERM) and leaves
   * everything as it was.
   */
  insertRoot(node: Node): Promise<void> {
    return promised(() => this.#insertRoot(node));
  }

  #insertRoot(node: Node): void {
    if (this.root) {
      throw new BlockError("EBUSY", `There already is a medium in device '${this.describeName()}'`);
    }
    if (!node.isOpen) throw new BlockError("ENOMEDIUM", `Node '${node.name}' is closed`);
    const edge = new Child(
      "root",
      ChildRole.FILTERED | ChildRole.PRIMARY,
      this,
      this.perm,
      this.shared,
    );
    attachEdge(edge, null, node);
    this.root = edge;
    for (const l of [...this.#insertListeners]) l(this);
  }

  /**
   * Removes the root (QEMU's blk_remove_bs): tells the listeners, waits for requests in
   * flight, detaches and drops the reference. Later requests answer ENOMEDIUM.
   */
  async removeRoot(): Promise<void> {
    const edge = this.root;
    if (!edge?.node) return;
    for (const l of [...this.#removeListeners]) {
      try {
        l(this);
      } catch (e) {
        // A listener's failure must not keep the medium in: removal goes on.
        console.error(`remove listener of ${this.parentDescription()} failed:`, e);
      }
    }
    const node = edge.node;
    let release: Promise<void> = Promise.resolve();
    await this.graph.drained([node], () => {
      if (this.root !== edge) return;
      this.root = null;
      release = this.graph.releaseChild(edge);
    });
    await release;
    // Requests held by a stop or a drain must not wait for a medium that is gone.
    this.#wakeAll();
  }

  #wakeAll(): void {
    const waiting = [...this.#parked, ...this.#queued];
    this.#parked = [];
    this.#queued = [];
    for (const w of waiting) w();
  }

  /** Changes the permissions taken on the root; a conflict throws and changes nothing. */
  setPerm(perm: number, shared: number): void {
    const edge = this.root;
    if (edge?.node) changeEdgePerm(edge, perm, shared);
    this.perm = perm;
    this.shared = shared;
  }

  // ---------------------------------------------------------------- media and tray

  /** blockdev-remove-medium: the tray must be open (for devices with one). */
  removeMedium(): Promise<void> {
    return removeMedium(this);
  }

  /** blockdev-insert-medium: the tray must be open and the drive empty. */
  insertMedium(node: Node): Promise<void> {
    return insertMedium(this, node);
  }

  /** eject: open the tray (forcing past a lock if asked) and remove the medium. */
  eject(force = false): Promise<void> {
    return eject(this, force);
  }

  /**
   * blockdev-change-medium with an already opened node: open the tray, swap the medium,
   * close the tray. The device sees only its media callbacks.
   */
  changeMedium(node: Node, force = false): Promise<void> {
    return changeMedium(this, node, force);
  }

  // ---------------------------------------------------------------- error policy

  /** Sets the error policies (`rerror`, `werror`). */
  setErrorPolicy(read: ErrorPolicy, write: ErrorPolicy): void {
    this.#readPolicy = read;
    this.#writePolicy = write;
    this.#policySet = true;
  }

  /** The read and write error policies. */
  get errorPolicy(): { read: ErrorPolicy; write: ErrorPolicy } {
    return { read: this.#readPolicy, write: this.#writePolicy };
  }

  /** Whether requests are held after an error with the `stop` action. */
  get stopped(): boolean {
    return this.#stopped;
  }

  /** Resumes after a `stop` (QMP `cont`): resets the I/O status and retries held requests. */
  resume(): void {
    this.iostatus = "ok";
    if (!this.#stopped) return;
    this.#stopped = false;
    const parked = this.#parked;
    this.#parked = [];
    for (const p of parked) p();
  }

  /** Resets the I/O status to `ok`. */
  resetIoStatus(): void {
    this.iostatus = "ok";
  }

  async #onError(
    e: unknown,
    op: Op,
    offset: number,
    bytes: number,
    qiov: IoVector | null,
    qiovOffset: number,
    flags: number,
  ): Promise<void> {
    if (--this.inFlight === 0) this.graph.notifyIdle();
    const err = BlockError.from(e, { node: this.name, op: OP_NAMES[op], offset });
    if (err.code === "ENOMEDIUM" && !this.root) throw err;
    const action = errorAction(op === Op.Read ? this.#readPolicy : this.#writePolicy, err);
    const data = ioErrorEventData(this, OP_NAMES[op], action, err);
    if (action === "stop") {
      if (this.iostatus === "ok") this.iostatus = err.code === "ENOSPC" ? "nospace" : "failed";
      this.#stopped = true;
    }
    this.graph.events.emit("BLOCK_IO_ERROR", data);
    if (action === "report") throw err;
    if (action === "ignore") return;
    await new Promise<void>((r) => this.#parked.push(r));
    return this.#request(op, offset, bytes, qiov, qiovOffset, flags);
  }

  // ---------------------------------------------------------------- requests

  #request(
    op: Op,
    offset: number,
    bytes: number,
    qiov: IoVector | null,
    qiovOffset: number,
    flags: number,
  ): Promise<void> {
    if (
      this.root !== null &&
      (this.quiesceCounter > 0 && !this.disableRequestQueuing || this.#stopped)
    ) {
      return this.#waitThenRequest(op, offset, bytes, qiov, qiovOffset, flags);
    }
    const err = checkRequest(
      this,
      offset,
      bytes,
      OP_NAMES[op],
      op === Op.Read ? "read" : op === Op.Flush ? "flush" : "write",
    );
    if (err !== null) return Promise.reject(err);
    const node = this.root!.node!;
    let p: Promise<void>;
    this.inFlight++;
    try {
      switch (op) {
        case Op.Read:
          p = node.preadv(offset, bytes, qiov!, qiovOffset, flags);
          break;
        case Op.Write:
          p = node.pwritev(
            offset,
            bytes,
            qiov!,
            qiovOffset,
            this.enableWriteCache ? flags : flags | ReqFlags.FUA,
          );
          break;
        case Op.Zeroes:
          p = node.pwriteZeroes(
            offset,
            bytes,
            this.enableWriteCache ? flags : flags | ReqFlags.FUA,
          );
          break;
        case Op.Discard:
          p = node.pdiscard(offset, bytes);
          break;
        default:
          p = node.flush();
      }
    } catch (e) {
      p = Promise.reject(e);
    }
    const policy = op === Op.Read ? this.#readPolicy : this.#writePolicy;
    // Devices report every error as a BLOCK_IO_ERROR event (QEMU does); exports and tools do not.
    if (policy === "report" && this.#device === null) return p.then(this.#done, this.#fail);
    return p.then(
      this.#done,
      (e) => this.#onError(e, op, offset, bytes, qiov, qiovOffset, flags),
    );
  }

  async #waitThenRequest(
    op: Op,
    offset: number,
    bytes: number,
    qiov: IoVector | null,
    qiovOffset: number,
    flags: number,
  ): Promise<void> {
    while (
      this.root !== null &&
      (this.#stopped || (this.quiesceCounter > 0 && !this.disableRequestQueuing))
    ) {
      if (this.#stopped) await new Promise<void>((r) => this.#parked.push(r));
      else await new Promise<void>((r) => this.#queued.push(r));
    }
    return this.#request(op, offset, bytes, qiov, qiovOffset, flags);
  }

  /** Reads `bytes` bytes at `offset` into `qiov` at `qiovOffset`. */
  preadv(offset: number, bytes: number, qiov: IoVector, qiovOffset = 0, flags = 0): Promise<void> {
    return this.#request(Op.Read, offset, bytes, qiov, qiovOffset, flags);
  }

  /**
   * Serves a read through `sink` as a host file range where the graph allows it (a file
   * node, or raw over one, with the range in the page cache: see `DriverInstance.preadHost`).
   * Resolves false, having called nothing, where it does not, and while requests wait
   * (drained, or stopped by the error policy): then read with {@link Backend.preadv}, which
   * waits and applies the error policy. The sink's failures pass through unchanged.
   */
  preadHost(offset: number, bytes: number, sink: HostReadSink): Promise<boolean> {
    if (
      this.root === null || this.#stopped || this.quiesceCounter > 0 ||
      checkRequest(this, offset, bytes, "read", "read") !== null
    ) {
      return HOST_READ_DECLINED;
    }
    this.inFlight++;
    return this.root.node!.preadHost(offset, bytes, sink).finally(this.#done);
  }

  /** Writes `bytes` bytes at `offset` from `qiov` at `qiovOffset`. */
  pwritev(offset: number, bytes: number, qiov: IoVector, qiovOffset = 0, flags = 0): Promise<void> {
    return this.#request(Op.Write, offset, bytes, qiov, qiovOffset, flags);
  }

  /** Reads into `buf` from `offset`. */
  read(offset: number, buf: Uint8Array, flags = 0): Promise<void> {
    return this.#request(Op.Read, offset, buf.length, IoVector.of(buf), 0, flags);
  }

  /** Writes `buf` at `offset`. */
  write(offset: number, buf: Uint8Array, flags = 0): Promise<void> {
    return this.#request(Op.Write, offset, buf.length, IoVector.of(buf), 0, flags);
  }

  /** Makes the range read as zeros ({@link ReqFlags}: MAY_UNMAP, FUA, NO_FALLBACK). */
  pwriteZeroes(offset: number, bytes: number, flags = 0): Promise<void> {
    return this.#request(Op.Zeroes, offset, bytes, null, 0, flags);
  }

  /** Discards the range. */
  pdiscard(offset: number, bytes: number): Promise<void> {
    return this.#request(Op.Discard, offset, bytes, null, 0, 0);
  }

  /** Flushes everything written so far to stable storage. */
  flush(): Promise<void> {
    return this.#request(Op.Flush, 0, 0, null, 0, 0);
  }

  /** The size of the medium in bytes; ENOMEDIUM when there is none. */
  getLength(): number {
    if (!this.isAvailable) {
      throw new BlockError("ENOMEDIUM", "No medium found", { node: this.name });
    }
    return this.root!.node!.getLength();
  }

  /** Allocation status at `offset` of the root node. */
  blockStatus(offset: number, bytes: number, wantZero = true): Promise<BlockStatus> {
    return promised(() => this.blockStatusNow(offset, bytes, wantZero));
  }

  /**
   * {@link Backend.blockStatus} at once when the graph has the answer at hand, else its
   * promise (see {@link Node.blockStatusNow}); throws what it finds wrong at once.
   */
  blockStatusNow(
    offset: number,
    bytes: number,
    wantZero = true,
  ): BlockStatus | Promise<BlockStatus> {
    const err = checkRequest(this, offset, bytes, "block-status", "read");
    if (err) throw err;
    const now = this.root!.node!.blockStatusNow(offset, bytes, wantZero);
    if (!(now instanceof Promise)) return now;
    this.inFlight++;
    return now.finally(this.#done);
  }

  /** Resizes the medium; needs the RESIZE permission. */
  async truncate(size: number, exact = true, prealloc: PreallocMode = "off"): Promise<void> {
    if (!this.isAvailable) {
      throw new BlockError("ENOMEDIUM", "No medium inserted", { node: this.name });
    }
    if (!(this.root!.perm & Perm.RESIZE)) {
      throw new BlockError(
        "EPERM",
        `Block device '${this.describeName()}' did not take the 'resize' permission`,
      );
    }
    this.inFlight++;
    try {
      await this.root!.node!.truncate(size, exact, prealloc);
    } finally {
      if (--this.inFlight === 0) this.graph.notifyIdle();
    }
  }

  // ---------------------------------------------------------------- ChildParent

  /** Backends are parents of kind "backend". */
  readonly parentKind = "backend" as const;

  /** Describes the Backend as a parent: `block device 'drive0'`, or by its device. */
  parentDescription(): string {
    if (this.name) return `block device '${this.name}'`;
    if (this.#device) return `device '${this.#device.id}'`;
    return "a block device";
  }

  /** How a user makes this Backend let go of its root. */
  releaseHint(): string {
    const who = this.name || this.#device?.id;
    return who
      ? `remove the medium from '${who}' (blockdev-remove-medium) or detach its device`
      : "close the program or export using it";
  }

  /** The root was drained: new requests queue until the drained section ends. */
  childDrainedBegin(_child: Child): void {
    if (this.quiesceCounter++ === 0) this.#device?.ops.drainedBegin?.();
  }

  /** The drained section ended: queued requests run. */
  childDrainedEnd(_child: Child): void {
    if (--this.quiesceCounter > 0) return;
    this.#device?.ops.drainedEnd?.();
    const queued = this.#queued;
    this.#queued = [];
    for (const q of queued) q();
  }

  /** Whether requests of this Backend are still in flight. */
  childDrainedPoll(_child: Child): boolean {
    return this.inFlight > 0;
  }

  /** The root changed size: tell the device. */
  childResized(_child: Child): void {
    this.#device?.ops.resize?.();
  }
}
