/**
 * An NBD export: a name clients ask for, a Backend it serves, and the connections using it.
 * Deleting the export, or removing the medium under it, ends those connections and emits
 * `BLOCK_EXPORT_DELETED` on the graph's event bus (QEMU's iotest 140 behaviour).
 *
 * @module
 */

import {
  type Backend,
  BitmapCheck,
  BlockError,
  type DirtyBitmap,
  DirtyBitmaps,
  findDirtyBitmap,
  type Graph,
  type Node,
  Perm,
} from "@blockgraph/core";
import { zeroTimeout } from "@blockgraph/drivers";
import { DataRuns } from "./extents.ts";
import {
  type BlockSizes,
  NBD_MAX_BUFFER_SIZE,
  NBD_MAX_STRING_SIZE,
  TransmissionFlags,
  utf8,
} from "@blockgraph/drivers/nbd";

/** How an export is made around a Backend the caller already holds. */
export interface NbdExportOptions {
  /** The export id (QMP `id`), unique among exports. */
  id: string;
  /** The name clients ask for (default: the id). */
  name?: string;
  /** A description for NBD_OPT_LIST and NBD_INFO_DESCRIPTION. */
  description?: string;
  /** The Backend served. */
  backend: Backend;
  /** Whether clients may write (default false). The Backend must hold the write permission. */
  writable?: boolean;
  /**
   * Whether to advertise multi-conn. `auto` (the default) advertises it: every connection of
   * an export shares one Backend, so writes of one are seen by all and a flush on any of
   * them flushes them all.
   */
  multiConn?: "on" | "off" | "auto";
  /** Block size constraints; the minimum defaults to the node's request alignment. */
  blockSizes?: Partial<BlockSizes>;
  /** Whether deleting the export drops the Backend (it was made for the export). */
  ownsBackend?: boolean;
  /** The node name reported by {@link NbdExport.info}. */
  nodeName?: string;
  /**
   * Dirty bitmaps offered as `qemu:dirty-bitmap:NAME` contexts. They are marked busy while
   * the export exists (QMP may then neither remove, clear nor change them).
   */
  bitmaps?: readonly DirtyBitmap[];
  /** Whether to offer the `qemu:allocation-depth` context (default false, as QEMU). */
  allocationDepth?: boolean;
}

/** QMP block-export-add arguments for an NBD export (QEMU's names). */
export interface BlockExportAddArgs {
  /** The export id. */
  id: string;
  /** The node to export. */
  "node-name": string;
  /** The export name (default: the node name). */
  name?: string;
  /** Whether clients may write (default false). */
  writable?: boolean;
  /** A description. */
  description?: string;
  /**
   * Bitmaps to offer as `qemu:dirty-bitmap:NAME`: a name, looked up on the node and down
   * its filtered and backing chain, or `{node, name}` anywhere in the graph.
   */
  bitmaps?: readonly (string | { node: string; name: string })[];
  /** Whether to offer the `qemu:allocation-depth` context (default false). */
  "allocation-depth"?: boolean;
}

/** One entry of query-block-exports. */
export interface BlockExportInfo {
  /** Always `nbd`. */
  type: "nbd";
  /** The export id. */
  id: string;
  /** The exported node. */
  "node-name": string;
  /** Whether the export is going away. */
  "shutting-down": boolean;
}

/** What an export needs of each client connection using it. */
export interface ExportClient {
  /** Ends the connection once its requests in flight have finished. */
  close(): void;
  /** Resolves when the connection is gone. */
  readonly closed: Promise<void>;
}

/** An export: a name, a Backend and its client connections. */
export class NbdExport {
  /** The export id. */
  readonly id: string;
  /** The name clients ask for. */
  readonly name: string;
  /** The description. */
  readonly description: string;
  /** The Backend served. */
  readonly backend: Backend;
  /** Whether clients may write. */
  readonly writable: boolean;
  /** Whether multi-conn is advertised. */
  readonly multiConn: boolean;
  /** The node name this export was made for, or the Backend's root at creation. */
  readonly nodeName: string;
  /** The dirty bitmaps offered as metadata contexts, busy while the export exists. */
  readonly bitmaps: readonly DirtyBitmap[];
  /** Whether the `qemu:allocation-depth` context is offered. */
  readonly allocationDepth: boolean;
  /** The data runs sparse reads of every connection share. */
  readonly dataRuns: DataRuns = new DataRuns();
  readonly #blockSizes: Partial<BlockSizes>;
  readonly #ownsBackend: boolean;
  readonly #clients = new Set<ExportClient>();
  #shuttingDown = false;
  #quiet = false;
  #deleted: Promise<void> | null = null;
  readonly #unsubscribe: () => void;
  readonly #onDeleted = new Set<(exp: NbdExport) => void>();

  /** Makes an export of `options.backend`; nothing is served until a server holds it. */
  constructor(options: NbdExportOptions) {
    const name = options.name ?? options.id;
    if (utf8(name).length > NBD_MAX_STRING_SIZE) {
      throw new BlockError("EINVAL", `export name '${name}' too long`);
    }
    if (utf8(options.description ?? "").length > NBD_MAX_STRING_SIZE) {
      throw new BlockError("EINVAL", `description '${options.description}' too long`);
    }
    this.id = options.id;
    this.name = name;
    this.description = options.description ?? "";
    this.backend = options.backend;
    this.writable = options.writable ?? false;
    if (this.writable && !(options.backend.perm & Perm.WRITE)) {
      throw new BlockError(
        "EPERM",
        `Export '${this.id}' cannot be writable: its block device took no write permission`,
      );
    }
    this.multiConn = (options.multiConn ?? "auto") !== "off";
    this.#blockSizes = options.blockSizes ?? {};
    this.#ownsBackend = options.ownsBackend ?? false;
    this.nodeName = options.nodeName ?? options.backend.node?.name ?? "";
    this.bitmaps = [...(options.bitmaps ?? [])];
    this.allocationDepth = options.allocationDepth ?? false;
    for (const bm of this.bitmaps) {
      const err = bm.check(BitmapCheck.ALLOW_RO);
      if (err) throw err;
    }
    // Marked in a loop of their own, so a refusal above leaves none busy (as QEMU does).
    for (const bm of this.bitmaps) bm.busy = true;
    // iotest 140: removing the medium deletes the export and disconnects its clients.
    this.#unsubscribe = options.backend.onRemove(() => void this.delete());
  }

  /**
   * Makes an export of node `node-name` from QMP block-export-add arguments: a Backend of
   * its own (read, and write when writable), dropped when the export is deleted.
   */
  static async fromNode(graph: Graph, args: BlockExportAddArgs): Promise<NbdExport> {
    const node = graph.findNode(args["node-name"]);
    if (!node) {
      throw new BlockError("ENOENT", `Cannot find device='' nor node-name='${args["node-name"]}'`);
    }
    const writable = args.writable ?? false;
    if (writable && !node.writable) {
      throw new BlockError("EPERM", "Cannot export read-only node as writable");
    }
    const bitmaps = (args.bitmaps ?? []).map((b) => findExportBitmap(graph, node, b, writable));
    // Clients learn the size once, at the handshake: nobody may resize the node under them.
    const backend = graph.createBackend({
      perm: Perm.CONSISTENT_READ | (writable ? Perm.WRITE : 0),
      shared: Perm.ALL & ~Perm.RESIZE,
    });
    try {
      await backend.insertRoot(node);
      return new NbdExport({
        id: args.id,
        name: args.name ?? node.name,
        ...(args.description === undefined ? {} : { description: args.description }),
        backend,
        writable,
        ownsBackend: true,
        nodeName: node.name,
        bitmaps,
        allocationDepth: args["allocation-depth"] ?? false,
      });
    } catch (e) {
      await backend.unref();
      throw e;
    }
  }

  /** Whether the export is being (or has been) deleted. */
  get shuttingDown(): boolean {
    return this.#shuttingDown;
  }

  /** How many clients are connected. */
  get clientCount(): number {
    return this.#clients.size;
  }

  /** The size clients see now (0 without a medium). */
  size(): number {
    return this.backend.isAvailable ? this.backend.getLength() : 0;
  }

  /** The block size constraints sent with NBD_INFO_BLOCK_SIZE. */
  blockSizes(): BlockSizes {
    const align = this.backend.node?.limits.requestAlignment ?? 1;
    const minimum = this.#blockSizes.minimum ?? align;
    return {
      minimum,
      preferred: this.#blockSizes.preferred ?? Math.max(4096, minimum),
      maximum: this.#blockSizes.maximum ?? NBD_MAX_BUFFER_SIZE,
    };
  }

  /** The transmission flags, given whether the client negotiated structured replies. */
  transmissionFlags(structured: boolean): number {
    let f = TransmissionFlags.HAS_FLAGS | TransmissionFlags.SEND_FLUSH |
      TransmissionFlags.SEND_FUA | TransmissionFlags.SEND_WRITE_ZEROES |
      TransmissionFlags.SEND_FAST_ZERO | TransmissionFlags.SEND_CACHE;
    f |= this.writable ? TransmissionFlags.SEND_TRIM : TransmissionFlags.READ_ONLY;
    if (structured) f |= TransmissionFlags.SEND_DF;
    if (this.multiConn) f |= TransmissionFlags.CAN_MULTI_CONN;
    return f;
  }

  /** The entry of query-block-exports, its members in the order QEMU prints them. */
  info(): BlockExportInfo {
    return {
      "node-name": this.nodeName,
      "shutting-down": this.#shuttingDown,
      type: "nbd",
      id: this.id,
    };
  }

  /** Registers a connection that chose this export; false when the export is going away. */
  addClient(client: ExportClient): boolean {
    if (this.#shuttingDown) return false;
    this.#clients.add(client);
    return true;
  }

  /** Forgets a connection that ended. */
  removeClient(client: ExportClient): void {
    this.#clients.delete(client);
  }

  /** Calls `fn` once the export has been deleted (servers forget it). */
  onDeleted(fn: (exp: NbdExport) => void): () => void {
    this.#onDeleted.add(fn);
    return () => this.#onDeleted.delete(fn);
  }

  /**
   * Deletes the export: new clients are refused, connected ones are ended once their
   * requests in flight finish, the Backend is dropped if the export made it, and
   * `BLOCK_EXPORT_DELETED` is emitted. Calling it again returns the same promise.
   */
  delete(): Promise<void> {
    this.#deleted ??= this.#delete();
    return this.#deleted;
  }

  /**
   * Undoes an export that was never served (block-export-add failed after making it): as
   * {@link NbdExport.delete}, without `BLOCK_EXPORT_DELETED`, as QEMU emits none then.
   */
  discard(): Promise<void> {
    this.#quiet = true;
    return this.delete();
  }

  async #delete(): Promise<void> {
    this.#shuttingDown = true;
    this.#unsubscribe();
    const clients = [...this.#clients];
    for (const c of clients) c.close();
    await Promise.all(clients.map((c) => c.closed));
    for (const bm of this.bitmaps) bm.busy = false;
    const graph = this.backend.graph;
    if (this.#ownsBackend) await this.backend.unref();
    for (const fn of [...this.#onDeleted]) fn(this);
    if (this.#quiet) return;
    // From a later task, as QEMU emits it from a bottom half: after the reply of the command
    // that deleted the export.
    await new Promise<void>((r) => zeroTimeout(r));
    graph.events.emit("BLOCK_EXPORT_DELETED", { id: this.id });
  }
}

/**
 * The bitmap an export's `bitmaps` entry names, with QEMU's checks: a plain name is looked
 * for on `node` and down its filtered and backing chain, and an enabled bitmap on a writable
 * node cannot be exported read-only (its contents would change under the client);
 * `{node, name}` is found as the bitmap commands find it. Busy or inconsistent bitmaps are
 * refused.
 */
function findExportBitmap(
  graph: Graph,
  node: Node,
  ref: string | { node: string; name: string },
  writable: boolean,
): DirtyBitmap {
  let bm: DirtyBitmap | undefined;
  if (typeof ref === "string") {
    let holder: Node | null = node;
    while (holder) {
      bm = findDirtyBitmap(holder, ref);
      if (bm) break;
      holder = holder.layerBelow;
    }
    if (!bm || !holder) throw new BlockError("ENOENT", `Bitmap '${ref}' is not found`);
    const err = bm.check(BitmapCheck.ALLOW_RO);
    if (err) throw err;
    if (!writable && holder.writable && bm.enabled) {
      throw new BlockError("EINVAL", `Enabled bitmap '${ref}' incompatible with readonly export`);
    }
  } else {
    bm = new DirtyBitmaps(graph).lookup(ref.node, ref.name);
    const err = bm.check(BitmapCheck.ALLOW_RO);
    if (err) throw err;
  }
  return bm;
}
