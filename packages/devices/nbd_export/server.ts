/**
 * The NBD server: listens on TCP or a unix socket, serves its exports to clients through the
 * fixed newstyle handshake, and limits how many clients it serves at once. Shaped for the
 * QMP monitor: `nbd-server-start` is {@link NbdServer.start}, `nbd-server-stop` is
 * {@link NbdServer.stop}, `block-export-add`/`-del` are {@link NbdServer.addExport} and
 * {@link NbdServer.deleteExport}, `query-block-exports` is {@link NbdServer.queryExports}.
 *
 * @module
 */

import { BlockError, type Graph } from "@blockgraph/core";
import { ListenerSockets, type X509Creds } from "@blockgraph/drivers/nbd";
import { ServerConnection } from "./connection.ts";
import { type BlockExportAddArgs, type BlockExportInfo, NbdExport } from "./export.ts";
import type { ExportLookup } from "./handshake.ts";

/** Where the server listens (QEMU's SocketAddress, flattened). */
export type NbdServerAddress =
  | { type: "inet"; host: string; port: number | string }
  | { type: "unix"; path: string };

/** Options of {@link NbdServer}. */
export interface NbdServerOptions {
  /** Where to listen. Port 0 picks a free port; {@link NbdServer.address} tells which. */
  addr: NbdServerAddress;
  /** The most clients served at once (0: no limit). Further clients wait to be accepted. */
  maxConnections?: number;
  /**
   * x509 credentials (endpoint `server`): clients must upgrade with NBD_OPT_STARTTLS before
   * anything else, and with `verifyPeer` present a certificate the CA signed.
   */
  tlsCreds?: X509Creds;
  /**
   * QEMU's `tls-authz`: once a client's certificate is verified (`verifyPeer`), called with
   * its distinguished name; throwing refuses the client, whose connection is dropped.
   */
  tlsAuthz?: (distinguishedName: string) => void;
  /** Where the server reports a client it refused (QEMU's "option negotiation failed"). */
  log?: (message: string) => void;
  /**
   * Answer reads of 64 KiB and more whose data lies, cached, in a host file under the export
   * (a `file` node, or `raw` over one) with `sendfile(2)`, the data never passing through
   * this process (default true; not over TLS). See `host_send.ts` in the drivers package.
   * The same socket descriptor lets a unix socket connection send each small reply as soon
   * as it is complete (`WireWriter.flush`); false turns both off.
   */
  sendfile?: boolean;
}

/** An NBD server and the exports it serves. */
export class NbdServer implements ExportLookup {
  readonly #options: NbdServerOptions;
  #listener: Deno.Listener | null = null;
  readonly #exports = new Map<string, NbdExport>();
  readonly #connections = new Set<ServerConnection>();
  #acceptLoop: Promise<void> | null = null;
  #sockets = new ListenerSockets();
  #slotWaiter: (() => void) | null = null;
  #stopping = false;

  /** Creates a server; {@link NbdServer.start} starts listening. */
  constructor(options: NbdServerOptions) {
    this.#options = options;
  }

  /**
   * Starts listening and serving (nbd-server-start).
   *
   * @example
   * ```ts
   * import { Graph } from "@blockgraph/core";
   * import { defaultRegistry } from "@blockgraph/drivers";
   * import { NbdServer } from "@blockgraph/devices";
   * const graph = new Graph({ registry: defaultRegistry() });
   * const node = await graph.open({ driver: "memory", size: 65536, "node-name": "disk0" }, "doc");
   * const server = new NbdServer({ addr: { type: "inet", host: "127.0.0.1", port: 0 } });
   * server.start();
   * await server.addExport(graph, { id: "e0", "node-name": "disk0", writable: true });
   * console.assert(server.queryExports()[0]!.id === "e0");
   * await server.stop();
   * await node.unref("doc");
   * await graph.closeAll();
   * ```
   */
  start(): void {
    if (this.#listener) throw new BlockError("EBUSY", "NBD server already running");
    const creds = this.#options.tlsCreds;
    if (creds && creds.endpoint !== "server") {
      throw new BlockError("EINVAL", "Expected TLS credentials for a server endpoint");
    }
    const a = this.#options.addr;
    if (a.type === "inet") {
      const port = typeof a.port === "string" ? Number(a.port) : a.port;
      if (!Number.isInteger(port) || port < 0 || port > 65535) {
        throw new BlockError("EINVAL", `Invalid port '${a.port}'`);
      }
      this.#listener = Deno.listen({ hostname: a.host, port, transport: "tcp" });
    } else {
      this.#listener = Deno.listen({ path: a.path, transport: "unix" });
    }
    this.#stopping = false;
    this.#sockets = new ListenerSockets();
    this.#acceptLoop = this.#accept(this.#listener);
  }

  /** Whether the server is listening. */
  get running(): boolean {
    return this.#listener !== null;
  }

  /** The bound address: the real port for TCP (useful after port 0), or the socket path. */
  get address(): NbdServerAddress {
    const l = this.#listener;
    if (!l) throw new BlockError("EINVAL", "NBD server not running");
    const a = l.addr;
    if (a.transport === "tcp") return { type: "inet", host: a.hostname, port: a.port };
    if (a.transport === "unix") return { type: "unix", path: a.path };
    throw new BlockError("EINVAL", `Unexpected listener transport '${a.transport}'`);
  }

  /** The id of the TLS credentials clients must use, or null when TLS is off. */
  get tlsCredsId(): string | null {
    return this.#options.tlsCreds?.id ?? null;
  }

  /** How many clients are connected. */
  get connectionCount(): number {
    return this.#connections.size;
  }

  async #accept(listener: Deno.Listener): Promise<void> {
    const max = this.#options.maxConnections ?? 0;
    for (;;) {
      if (max > 0 && this.#connections.size >= max) {
        await new Promise<void>((r) => (this.#slotWaiter = r));
        if (this.#stopping) return;
      }
      let conn: Deno.Conn;
      try {
        conn = await listener.accept();
      } catch {
        return;
      }
      if (this.#stopping) {
        conn.close();
        return;
      }
      if (conn.localAddr.transport === "tcp") {
        try {
          // TCP_NODELAY: without it, a batch of replies whose tail is smaller than a segment
          // waits in the kernel (Nagle) for the ACK of the previous segment, and a client
          // that has nothing more to send delays that ACK by up to 40 ms (Linux's delayed
          // ACK, `ato:40` in `ss -ti`). QEMU 7.2's qemu-nbd never sets it on accepted
          // sockets (strace shows TCP_NODELAY only in the client), which is why it manages
          // 363 IOPS at depth 32 over TCP loopback: one ~40 ms stall per pipelined batch.
          // TLS connections run over this same socket, so they inherit the option.
          (conn as Deno.TcpConn).setNoDelay(true);
        } catch {
          // A connection reset before we got to it: its handshake will fail.
        }
      }
      const o = this.#options;
      // The socket under the connection, for sendfile replies; looked for before the next
      // accept (unix sockets can only be told apart so).
      const tls = o.tlsCreds
        ? { creds: o.tlsCreds, authz: o.tlsAuthz ?? null, log: o.log ?? null }
        : null;
      const sock = tls || o.sendfile === false ? null : this.#sockets.find(conn);
      const c = new ServerConnection(conn, this, tls, sock);
      this.#connections.add(c);
      const sockets = this.#sockets;
      void c.run().then(() => {
        if (sock) sockets.release(sock);
        this.#connections.delete(c);
        const w = this.#slotWaiter;
        this.#slotWaiter = null;
        w?.();
      });
    }
  }

  /**
   * Stops listening and ends every connection once its requests in flight are answered
   * (nbd-server-stop). Exports are deleted too, as QEMU deletes NBD exports with the server.
   */
  async stop(): Promise<void> {
    const listener = this.#listener;
    if (!listener) return;
    this.#stopping = true;
    this.#listener = null;
    listener.close();
    const w = this.#slotWaiter;
    this.#slotWaiter = null;
    w?.();
    await this.#acceptLoop;
    await Promise.all([...this.#exports.values()].map((e) => e.delete()));
    const conns = [...this.#connections];
    for (const c of conns) c.close();
    await Promise.all(conns.map((c) => c.closed));
    const a = this.#options.addr;
    if (a.type === "unix") await Deno.remove(a.path).catch(() => {});
  }

  /** Serves `exp`; refuses a second export with the same id or name. */
  serveExport(exp: NbdExport): void {
    for (const e of this.#exports.values()) {
      if (e.id === exp.id) {
        throw new BlockError("EEXIST", `Block export id '${exp.id}' is already in use`);
      }
      if (e.name === exp.name) {
        throw new BlockError("EEXIST", `NBD server already has export named '${exp.name}'`);
      }
    }
    this.#exports.set(exp.id, exp);
    exp.onDeleted(() => {
      if (this.#exports.get(exp.id) === exp) this.#exports.delete(exp.id);
    });
  }

  /** block-export-add: exports node `node-name` under its own Backend. */
  async addExport(graph: Graph, args: BlockExportAddArgs): Promise<NbdExport> {
    if (!this.#listener) throw new BlockError("EINVAL", "NBD server not running");
    if (this.#exports.has(args.id)) {
      throw new BlockError("EEXIST", `Block export id '${args.id}' is already in use`);
    }
    const name = args.name ?? args["node-name"];
    if (this.findExport(name)) {
      throw new BlockError("EEXIST", `NBD server already has export named '${name}'`);
    }
    const exp = await NbdExport.fromNode(graph, args);
    try {
      this.serveExport(exp);
    } catch (e) {
      await exp.discard();
      throw e;
    }
    return exp;
  }

  /**
   * block-export-del (QEMU's `qmp_block_export_del`): starts deleting the export with `id`
   * and returns at once, with a promise of the deletion (its `BLOCK_EXPORT_DELETED` event
   * comes later, after the command's reply, as QEMU's does). Throws when there is no such
   * export, when it is already being deleted, and without `force` when it has clients
   * (QEMU's mode=safe); with `force` the clients are disconnected (mode=hard).
   */
  requestDelete(id: string, force = false): Promise<void> {
    const exp = this.#exports.get(id);
    if (!exp) throw new BlockError("ENOENT", `Export '${id}' is not found`);
    if (exp.shuttingDown) throw new BlockError("EBUSY", `Export '${id}' is already shutting down`);
    if (!force && exp.clientCount > 0) {
      throw new BlockError("EBUSY", `export '${id}' still in use`);
    }
    return exp.delete();
  }

  /** {@link NbdServer.requestDelete}, resolving once the export is deleted. */
  async deleteExport(id: string, force = false): Promise<void> {
    await this.requestDelete(id, force);
  }

  /** The export called `name`, if served. */
  findExport(name: string): NbdExport | undefined {
    for (const e of this.#exports.values()) if (e.name === name) return e;
    return undefined;
  }

  /** The export with `id`, if served. */
  exportById(id: string): NbdExport | undefined {
    return this.#exports.get(id);
  }

  /** Every export served. */
  exports(): NbdExport[] {
    return [...this.#exports.values()];
  }

  /** query-block-exports: the newest export first, as QEMU lists them. */
  queryExports(): BlockExportInfo[] {
    return this.exports().reverse().map((e) => e.info());
  }
}
