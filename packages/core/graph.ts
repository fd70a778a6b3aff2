/**
 * The graph: every node, every Backend, the name registry they share, the monitor's
 * references, jobs, the user-creatable objects, and `closeAll`.
 *
 * @module
 */

import { Backend, type BackendOptions } from "./backend.ts";
import type { Child } from "./child.ts";
import { drainBeginNoPoll, drainEnd, drainPoll, syncEdgeQuiesce } from "./drain.ts";
import type { DriverRegistry } from "./driver.ts";
import { BlockError } from "./errors.ts";
import { EventBus } from "./events.ts";
import * as change from "./graph_change.ts";
import { holderLabel, type Node } from "./node.ts";
import { openNode } from "./open.ts";
import type { OptionValues } from "./options.ts";
import { refreshPermissions } from "./permissions.ts";
import { Transaction } from "./transaction.ts";
import { UserObjects } from "./user_objects.ts";

/** What `closeAll` needs of a job: cancel it and wait until it has let go of its nodes. */
export interface GraphJob {
  /** The job id. */
  readonly id: string;
  /** A phrase for messages: `mirror job 'job0'`. */
  describe(): string;
  /** Cancels the job (forced) and resolves when it has finished and released its nodes. */
  cancelAndWait(): Promise<void>;
}

/** Options of a new graph. */
export interface GraphOptions {
  /** The drivers nodes can be opened with. */
  registry: DriverRegistry;
}

/** The rules QEMU applies to user-given node and device names (`id_wellformed`). */
export function isWellFormedName(name: string): boolean {
  return /^[A-Za-z][A-Za-z0-9._-]*$/.test(name);
}

/**
 * A block graph. Everything lives in exactly one graph; there is no global state.
 *
 * @example
 * ```ts ignore
 * const graph = new Graph({ registry });
 * const node = await graph.open({ driver: "null-co", "node-name": "null0" }, "example");
 * const blk = graph.createBackend({ perm: Perm.CONSISTENT_READ, shared: Perm.ALL });
 * await blk.insertRoot(node);
 * await node.unref("example");
 * await graph.closeAll();
 * ```
 */
export class Graph {
  /** The drivers this graph opens nodes with. */
  readonly registry: DriverRegistry;
  /** Events (QMP names): `DEVICE_TRAY_MOVED`, `BLOCK_IO_ERROR`, ... */
  readonly events: EventBus = new EventBus();
  /**
   * The user-creatable objects (`--object`, `object-add`) by id, as QEMU's `/objects`: their
   * definitions, which drivers look up when an option names one (an `nbd` node's
   * `tls-creds`). See `user_objects.ts`.
   */
  readonly objects: UserObjects = new UserObjects();
  readonly #nodes = new Set<Node>();
  readonly #names = new Map<string, Node | Backend>();
  readonly #backends = new Set<Backend>();
  readonly #monitorOwned = new Set<Node>();
  readonly #jobs = new Set<GraphJob>();
  readonly #closing = new Set<Promise<void>>();
  readonly #ledger = new Map<Node, Map<string | Child, number>>();
  #idleWaiters: (() => void)[] = [];
  #autoName = 0;
  #closedAll = false;
  #closingAll = false;

  /** Creates an empty graph. */
  constructor(options: GraphOptions) {
    this.registry = options.registry;
  }

  // ---------------------------------------------------------------- nodes and names

  /**
   * Opens a node (and any inline children) from blockdev-add style options. The caller
   * holds the one reference of the result, recorded under `holder`. With `how.noIo` the node
   * and all it opens are for their metadata only (`NodeFlags.noIo`, `img info`).
   */
  open(options: OptionValues, holder = "caller", how: { noIo?: boolean } = {}): Promise<Node> {
    if (this.#closingAll || this.#closedAll) {
      return Promise.reject(new BlockError("ESHUTDOWN", "The block graph has been closed"));
    }
    return openNode(this, options, holder, null, null, how.noIo ?? false);
  }

  /** Every open node. */
  nodes(): Node[] {
    return [...this.#nodes];
  }

  /** Every Backend. */
  backends(): Backend[] {
    return [...this.#backends];
  }

  /** The node called `name`, or undefined. */
  findNode(name: string): Node | undefined {
    const n = this.#names.get(name);
    return n && !(n instanceof Backend) ? n : undefined;
  }

  /** The Backend called `name`, or undefined. */
  findBackend(name: string): Backend | undefined {
    const b = this.#names.get(name);
    return b instanceof Backend ? b : undefined;
  }

  /** A fresh generated node name, `#block001` and up. */
  generateNodeName(): string {
    let name: string;
    do name = `#block${String(++this.#autoName).padStart(3, "0")}`; while (this.#names.has(name));
    return name;
  }

  /** Checks a user-given node name against QEMU's rules and the shared namespace. */
  checkNodeName(name: string): void {
    if (!isWellFormedName(name)) throw new BlockError("EINVAL", `Invalid node-name: '${name}'`);
    if (name.length > 31) throw new BlockError("EINVAL", "Node name too long");
    const other = this.#names.get(name);
    if (other instanceof Backend) {
      throw new BlockError("EEXIST", `node-name=${name} is conflicting with a device id`);
    }
    if (other) throw new BlockError("EEXIST", `Duplicate nodes with node-name='${name}'`);
  }

  /** Registers a node being opened (called by `open`). */
  registerNode(node: Node, holder: string): void {
    this.#nodes.add(node);
    this.#names.set(node.name, node);
    this.ledgerAdd(node, holder);
  }

  /**
   * Moves `node` after every node registered so far, as QEMU lists a format node after the
   * `file` child it opens first (`bdrv_open_inherit` opens it before the node's own open
   * names the node): `query-named-block-nodes` then lists nodes in QEMU's order.
   */
  requeueNode(node: Node): void {
    if (!this.#nodes.delete(node)) return;
    this.#nodes.add(node);
  }

  /** Forgets a node whose open failed before it was usable. */
  unregisterNode(node: Node): void {
    this.#nodes.delete(node);
    if (this.#names.get(node.name) === node) this.#names.delete(node.name);
    this.#ledger.delete(node);
  }

  // ---------------------------------------------------------------- lifetime

  /** Records that `holder` took a reference on `node`. */
  ledgerAdd(node: Node, holder: string | Child): void {
    let m = this.#ledger.get(node);
    if (!m) this.#ledger.set(node, m = new Map());
    m.set(holder, (m.get(holder) ?? 0) + 1);
  }

  /** Records that `holder` dropped a reference on `node`. */
  ledgerRemove(node: Node, holder: string | Child): void {
    const m = this.#ledger.get(node);
    const n = (m?.get(holder) ?? 0) - 1;
    if (!m || n < 0) return;
    if (n > 0) m.set(holder, n);
    else m.delete(holder);
  }

  /** Who holds references on `node`, for "why is this node still alive?". */
  holders(node: Node): { holder: string; count: number }[] {
    return [...(this.#ledger.get(node) ?? new Map<string | Child, number>())].map((
      [holder, count],
    ) => ({ holder: holderLabel(holder), count }));
  }

  /**
   * Unlinks a node whose reference count reached zero and closes it. Private to the graph:
   * only `Node.unref` calls it.
   */
  deleteNode(node: Node): Promise<void> {
    this.#nodes.delete(node);
    if (this.#names.get(node.name) === node) this.#names.delete(node.name);
    this.#monitorOwned.delete(node);
    this.#ledger.delete(node);
    const p = this.#closeNode(node);
    this.#closing.add(p);
    const forget = () => this.#closing.delete(p);
    p.then(forget, forget);
    return p;
  }

  async #closeNode(node: Node): Promise<void> {
    if (node.parents.length > 0) {
      throw new BlockError("EBUSY", `Node '${node.name}' closed while it still has parents`);
    }
    let failure: unknown = null;
    drainBeginNoPoll(node);
    try {
      await this.waitUntil(() => !drainPoll(node));
      if (node.instance && node.writable) {
        try {
          await node.flush();
        } catch (e) {
          failure = e;
        }
      }
      const inst = node.instance;
      node.instance = null;
      if (inst) {
        try {
          await inst.close();
        } catch (e) {
          failure ??= e;
        }
      }
    } finally {
      const releases: Promise<void>[] = [];
      for (const c of [...node.children]) releases.push(this.releaseChild(c));
      node.quiesceCounter = 0;
      const results = await Promise.allSettled(releases);
      for (const r of results) if (r.status === "rejected") failure ??= r.reason;
    }
    if (failure) throw BlockError.from(failure, { node: node.name, op: "close" });
  }

  /**
   * Detaches `child` from its parent and drops its reference; permissions of the old node
   * are loosened (errors there cannot happen and are ignored).
   */
  releaseChild(child: Child): Promise<void> {
    const node = child.node;
    if (!node) return Promise.resolve();
    change.unlinkChild(child);
    syncEdgeQuiesce(child);
    const tran = new Transaction();
    try {
      refreshPermissions([node], tran);
      tran.commit();
    } catch {
      tran.abort();
    }
    return node.unref(child);
  }

  // ---------------------------------------------------------------- drain

  /** Enters a drained section on `node` without waiting (see drain.ts). */
  drainBeginNoPoll(node: Node): void {
    drainBeginNoPoll(node);
  }

  /** Leaves a drained section on `node`. */
  drainEnd(node: Node): void {
    drainEnd(node);
  }

  /** Whether `node` or anything above it has requests in flight. */
  drainPoll(node: Node): boolean {
    return drainPoll(node);
  }

  /** Runs `fn` with `nodes` drained: nothing above them issues requests meanwhile. */
  async drained<T>(nodes: readonly Node[], fn: () => T | Promise<T>): Promise<T> {
    for (const n of nodes) drainBeginNoPoll(n);
    try {
      await this.waitUntil(() => nodes.every((n) => !drainPoll(n)));
      return await fn();
    } finally {
      for (const n of nodes) if (n.quiesceCounter > 0) drainEnd(n);
    }
  }

  /** Called when a node's or a Backend's in-flight count reaches zero. */
  notifyIdle(): void {
    if (this.#idleWaiters.length === 0) return;
    const w = this.#idleWaiters;
    this.#idleWaiters = [];
    for (const f of w) f();
  }

  /** Resolves once `done()` holds, re-checking whenever something goes idle. */
  async waitUntil(done: () => boolean): Promise<void> {
    while (!done()) await new Promise<void>((r) => this.#idleWaiters.push(r));
  }

  // ---------------------------------------------------------------- backends

  /** Creates a Backend, empty until a root is inserted; the caller holds one reference. */
  createBackend(options: BackendOptions = {}): Backend {
    if (this.#closingAll) {
      throw new BlockError("ESHUTDOWN", "The block graph is closing");
    }
    if (options.name !== undefined) this.#checkBackendName(options.name);
    const b = new Backend(this, options);
    this.#backends.add(b);
    if (options.name) this.#names.set(options.name, b);
    return b;
  }

  #checkBackendName(name: string): void {
    if (!isWellFormedName(name)) throw new BlockError("EINVAL", `Invalid device name '${name}'`);
    const other = this.#names.get(name);
    if (other instanceof Backend) {
      throw new BlockError("EEXIST", `Device with id '${name}' already exists`);
    }
    if (other) {
      throw new BlockError("EEXIST", `Device name '${name}' conflicts with an existing node name`);
    }
  }

  /** Forgets a Backend whose last reference was dropped (called by the Backend). */
  forgetBackend(b: Backend): void {
    this.#backends.delete(b);
    if (b.name && this.#names.get(b.name) === b) this.#names.delete(b.name);
  }

  // ---------------------------------------------------------------- monitor

  /** Gives the monitor the caller's reference on `node` (blockdev-add). */
  addMonitorNode(node: Node, holder: string): void {
    this.#monitorOwned.add(node);
    this.ledgerAdd(node, "monitor");
    this.ledgerRemove(node, holder);
  }

  /** Whether the monitor holds a reference on `node`. */
  isMonitorOwned(node: Node): boolean {
    return this.#monitorOwned.has(node);
  }

  /** Monitor-owned nodes (what blockdev-add created and blockdev-del may remove). */
  monitorNodes(): Node[] {
    return [...this.#monitorOwned];
  }

  /** blockdev-del: QEMU's checks, in QEMU's order and words, then drop the reference. */
  async blockdevDel(name: string): Promise<void> {
    const node = this.findNode(name);
    if (!node) throw new BlockError("ENOENT", `Failed to find node with node-name='${name}'`);
    if (node.parents.some((c) => c.parent.parentKind === "backend")) {
      throw new BlockError("EBUSY", `Node ${name} is in use`);
    }
    const job = node.parents.find((c) => c.parent.parentKind === "job");
    if (job) {
      const holder = job.parent;
      const type = "jobType" in holder ? String(holder.jobType) : holder.parentDescription();
      throw new BlockError(
        "EBUSY",
        `Node '${name}' is busy: block device is in use by block job: ${type}`,
      );
    }
    if (!this.#monitorOwned.has(node)) {
      throw new BlockError("EPERM", `Node ${name} is not owned by the monitor`);
    }
    if (node.refcount > 1) throw new BlockError("EBUSY", `Block device ${name} is in use`);
    this.#monitorOwned.delete(node);
    await node.unref("monitor");
  }

  // ---------------------------------------------------------------- jobs

  /** Registers a running job, so `closeAll` can cancel it. */
  addJob(job: GraphJob): void {
    this.#jobs.add(job);
  }

  /** Forgets a finished job. */
  removeJob(job: GraphJob): void {
    this.#jobs.delete(job);
  }

  /** Every registered job. */
  jobs(): GraphJob[] {
    return [...this.#jobs];
  }

  // ---------------------------------------------------------------- graph changes

  /** Attaches `node` as child `name` of `parent` with `role` (drained, transactional). */
  attachChild(parent: Node, node: Node, name: string, role: number): Promise<Child> {
    return change.attachChild(this, parent, node, name, role);
  }

  /** Detaches `child` from its parent (drained, transactional); refused when frozen. */
  detachChild(child: Child): Promise<void> {
    return change.detachChild(this, child);
  }

  /** Sets (or with `null` removes) the backing child of `node`. */
  setBacking(node: Node, backing: Node | null): Promise<void> {
    return change.setBacking(this, node, backing);
  }

  /** Moves every parent edge of `from` to `to` (except edges that must stay or would loop). */
  replaceNode(from: Node, to: Node): Promise<void> {
    return change.replaceNode(this, from, to);
  }

  /** Puts `top` under `newTop` (as backing or filtered child) and `newTop` in its place. */
  append(newTop: Node, top: Node): Promise<void> {
    return change.append(this, newTop, top);
  }

  /** Opens a filter above `node` and puts it in the node's place; returns the filter. */
  insertFilter(node: Node, filterOptions: OptionValues, holder = "caller"): Promise<Node> {
    return change.insertFilter(this, node, filterOptions, holder);
  }

  /** Removes filter `filter` from the graph, putting its child in its place. */
  dropFilter(filter: Node): Promise<void> {
    return change.dropFilter(this, filter);
  }

  /** Changes a node's options in place (blockdev-reopen). */
  reopen(node: Node, options: OptionValues): Promise<void> {
    return change.reopen(this, node, options);
  }

  // ---------------------------------------------------------------- closeAll

  /**
   * Closes everything, as QEMU's 2015 rework settled it: cancel jobs, drain, remove the root
   * of every Backend, drop the monitor's references; every node then closes because its
   * count reaches zero. Throws (EBUSY) naming each node left and who holds it. Backends
   * stay usable afterwards and answer ENOMEDIUM.
   */
  async closeAll(): Promise<void> {
    this.#closingAll = true;
    for (const job of [...this.#jobs]) {
      await job.cancelAndWait();
      this.#jobs.delete(job);
    }
    const all = [...this.#nodes];
    for (const n of all) drainBeginNoPoll(n);
    await this.waitUntil(() => all.every((n) => !n.isOpen || !drainPoll(n)));
    const errors: unknown[] = [];
    for (const b of [...this.#backends]) {
      try {
        await b.removeRoot();
      } catch (e) {
        errors.push(e);
      }
    }
    for (const n of [...this.#monitorOwned]) {
      this.#monitorOwned.delete(n);
      try {
        await n.unref("monitor");
      } catch (e) {
        errors.push(e);
      }
    }
    // Nodes that stay alive keep their drained section: nothing may use them any more.
    while (this.#closing.size > 0) {
      const results = await Promise.allSettled([...this.#closing]);
      for (const r of results) if (r.status === "rejected") errors.push(r.reason);
    }
    this.#closedAll = true;
    if (this.#nodes.size > 0) {
      const left = [...this.#nodes].map((n) => {
        const who = this.holders(n).map((h) => `${h.holder} x${h.count}`).join(", ");
        return `'${n.name}' (refcount ${n.refcount}: ${who || "unknown holders"})`;
      });
      throw new BlockError("EBUSY", `closeAll left nodes open: ${left.join("; ")}`);
    }
    if (errors.length > 0) {
      throw BlockError.from(errors[0], { op: "close" });
    }
  }

  /** Whether `closeAll` has run. */
  get closed(): boolean {
    return this.#closedAll;
  }
}
