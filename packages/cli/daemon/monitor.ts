/**
 * The QMP monitor: QEMU's wire protocol on a unix socket. Each client gets the greeting,
 * must negotiate with `qmp_capabilities`, then sends `{"execute", "arguments"?, "id"?}` and
 * gets `{"return"}` or `{"error": {"class", "desc"}}` with its `id` echoed; negotiated
 * clients also receive the graph's events with timestamps. Bad JSON and bad input get
 * QEMU's messages and the monitor keeps serving; several clients are served at once and
 * commands run one at a time, as QEMU runs them in its main loop.
 *
 * @module
 */

import { BlockError, type BlockEvent, JsonStreamer, type JsonValue } from "@blockgraph/core";
import { checkArgs } from "./qmp_args.ts";
import type { Closeable, Daemon } from "./daemon.ts";
import { QMP_CAPABILITIES, versionInfo } from "./qmp_commands_core.ts";
import { QmpError, toQmpError } from "./qmp_error.ts";
import { formatQmpJson } from "./qmp_json.ts";

const encoder = new TextEncoder();

/** A QMP monitor listening on a unix socket. */
export class QmpMonitor implements Closeable {
  readonly #daemon: Daemon;
  readonly #listener: Deno.Listener;
  readonly #path: string;
  readonly #sessions = new Set<QmpSession>();
  readonly #accepting: Promise<void>;
  #closed: Promise<void> | null = null;

  /** Listens on `path` (a stale socket there is replaced, as QEMU's chardev does). */
  constructor(daemon: Daemon, path: string) {
    this.#daemon = daemon;
    this.#path = path;
    try {
      if (Deno.lstatSync(path).isSocket) Deno.removeSync(path);
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
    this.#listener = Deno.listen({ path, transport: "unix" });
    this.#accepting = this.#accept();
  }

  /** The socket path. */
  get path(): string {
    return this.#path;
  }

  /** How many clients are connected. */
  get sessionCount(): number {
    return this.#sessions.size;
  }

  async #accept(): Promise<void> {
    for (;;) {
      let conn: Deno.Conn;
      try {
        conn = await this.#listener.accept();
      } catch {
        return;
      }
      const s = new QmpSession(this.#daemon, conn);
      this.#sessions.add(s);
      void s.run().finally(() => this.#sessions.delete(s));
    }
  }

  /** Stops listening, ends every session and removes the socket. */
  close(): Promise<void> {
    this.#closed ??= (async () => {
      this.#listener.close();
      await this.#accepting;
      await Promise.all([...this.#sessions].map((s) => s.close()));
      await Deno.remove(this.#path).catch(() => {});
    })();
    return this.#closed;
  }
}

/** One client of a monitor. */
export class QmpSession {
  readonly #daemon: Daemon;
  readonly #conn: Deno.Conn;
  #negotiated = false;
  /** Whether the client enabled the `oob` capability (`exec-oob` is then accepted). */
  #oob = false;
  #writing: Promise<void> = Promise.resolve();
  #unsubscribe: (() => void) | null = null;
  #done: Promise<void> | null = null;
  #closed = false;

  /** Serves `conn` for `daemon`. */
  constructor(daemon: Daemon, conn: Deno.Conn) {
    this.#daemon = daemon;
    this.#conn = conn;
  }

  /** Sends the greeting and serves requests until the client leaves or the session closes. */
  run(): Promise<void> {
    this.#done ??= this.#run();
    return this.#done;
  }

  async #run(): Promise<void> {
    this.#send({ QMP: { version: versionInfo(), capabilities: [...QMP_CAPABILITIES] } });
    const streamer = new JsonStreamer();
    const decoder = new TextDecoder();
    const buf = new Uint8Array(65536);
    try {
      for (;;) {
        let n: number | null;
        try {
          n = await this.#conn.read(buf);
        } catch {
          break;
        }
        if (n === null) break;
        for (const req of streamer.feed(decoder.decode(buf.subarray(0, n), { stream: true }))) {
          await this.#handle(req);
          if (this.#closed) break;
        }
        if (this.#closed) break;
      }
    } finally {
      this.#unsubscribe?.();
      this.#unsubscribe = null;
      await this.#writing;
      this.#closeConn();
    }
  }

  #closeConn(): void {
    this.#closed = true;
    try {
      this.#conn.close();
    } catch {
      // Already closed.
    }
  }

  /** Ends the session once what was queued for the client has been written. */
  async close(): Promise<void> {
    this.#unsubscribe?.();
    this.#unsubscribe = null;
    await this.#writing;
    this.#closeConn();
    await this.#done;
  }

  #send(msg: unknown): void {
    if (this.#closed) return;
    const bytes = encoder.encode(formatQmpJson(msg) + "\r\n");
    this.#writing = this.#writing.then(async () => {
      let off = 0;
      while (off < bytes.length) off += await this.#conn.write(bytes.subarray(off));
    }).catch(() => {
      // The client went away; the read loop notices and ends the session.
    });
  }

  #sendEvent(e: BlockEvent): void {
    this.#send({ timestamp: e.timestamp, event: e.event, data: e.data });
  }

  async #handle(req: JsonValue | BlockError): Promise<void> {
    if (req instanceof BlockError) {
      this.#send({ error: new QmpError("GenericError", req.message) });
      return;
    }
    const hasId = typeof req === "object" && req !== null && !Array.isArray(req) && "id" in req;
    const id = hasId ? (req as Record<string, JsonValue>).id : undefined;
    const reply = (body: Record<string, unknown>) => this.#send(hasId ? { ...body, id } : body);
    let result: unknown;
    try {
      result = await this.#daemon.serialize(this.#dispatch(req));
    } catch (e) {
      reply({ error: toQmpError(e) });
      return;
    }
    reply({ return: result ?? {} });
  }

  /** Checks the request and returns the call to make (QEMU's qmp_dispatch checks). */
  #dispatch(req: JsonValue): () => Promise<unknown> {
    if (typeof req !== "object" || req === null || Array.isArray(req)) {
      throw new QmpError("GenericError", "QMP input must be a JSON object");
    }
    let execKey: string | undefined;
    for (const [k, v] of Object.entries(req)) {
      if (k === "execute" || (k === "exec-oob" && this.#oob)) {
        if (typeof v !== "string") {
          throw new QmpError("GenericError", `QMP input member '${k}' must be a string`);
        }
        // QEMU meets the members in its hash order, which puts exec-oob first.
        if (execKey !== undefined) {
          throw new QmpError("GenericError", "QMP input member 'execute' clashes with 'exec-oob'");
        }
        execKey = k;
      } else if (k === "arguments") {
        if (typeof v !== "object" || v === null || Array.isArray(v)) {
          throw new QmpError("GenericError", "QMP input member 'arguments' must be an object");
        }
      } else if (k !== "id") {
        throw new QmpError("GenericError", `QMP input member '${k}' is unexpected`);
      }
    }
    if (execKey === undefined) {
      throw new QmpError("GenericError", "QMP input lacks member 'execute'");
    }
    const name = req[execKey] as string;
    const args = (req.arguments ?? {}) as Record<string, unknown>;
    const daemon = this.#daemon;
    if (!this.#negotiated && name !== "qmp_capabilities") {
      throw new QmpError(
        "CommandNotFound",
        "Expecting capabilities negotiation with 'qmp_capabilities'",
      );
    }
    if (this.#negotiated && name === "qmp_capabilities") {
      throw new QmpError(
        "CommandNotFound",
        "Capabilities negotiation is already complete, command ignored",
      );
    }
    const cmd = daemon.commands.get(name);
    if (!cmd) throw new QmpError("CommandNotFound", `The command ${name} has not been found`);
    if (execKey === "exec-oob") {
      throw new QmpError("GenericError", `The command ${name} does not support OOB`);
    }
    const checked = cmd.args === null ? args : checkArgs(args, cmd.args);
    return async () => {
      const result = await cmd.run(checked, { daemon });
      if (name === "qmp_capabilities") {
        this.#negotiated = true;
        this.#oob = ((checked.enable as string[] | undefined) ?? []).includes("oob");
        this.#unsubscribe = daemon.graph.events.on("*", (e) => this.#sendEvent(e));
      }
      return result;
    };
  }
}
