/**
 * The storage daemon's state: one graph (its `--object`/`object-add` objects in
 * `graph.objects`), the NBD server (when started), the drives made with `--drive`, the QMP
 * monitors, the command table, and the shutdown sequence qemu-storage-daemon follows
 * (exports closed, then jobs cancelled, drained, `closeAll`).
 *
 * @module
 */

import { type Backend, BlockError, Graph } from "@blockgraph/core";
import type { NbdServer } from "@blockgraph/devices";
import { defaultRegistry } from "@blockgraph/drivers";
import type { ArgsSchema } from "./qmp_args.ts";
import type { DaemonDrive } from "./drive.ts";
import { QmpError } from "./qmp_error.ts";

/** What a command handler gets besides its arguments. */
export interface QmpCommandContext {
  /** The daemon the command acts on. */
  readonly daemon: Daemon;
}

/** One QMP command: its name, its arguments' schema and its handler. */
export interface QmpCommand {
  /** The command name (`blockdev-add`). */
  readonly name: string;
  /**
   * The schema the arguments are checked against before `run`; `null` when the handler
   * checks them itself (blockdev-add's arguments are a driver's options).
   */
  readonly args: ArgsSchema | null;
  /** Runs the command; the result is the reply's `return` (undefined: `{}`). */
  run(args: Record<string, unknown>, ctx: QmpCommandContext): unknown | Promise<unknown>;
}

/** Something to close at shutdown (a monitor listening). */
export interface Closeable {
  /** Stops it; resolves when it has stopped. */
  close(): Promise<void>;
}

/** A storage daemon: a graph driven over QMP and served over NBD. */
export class Daemon {
  /** The block graph. */
  readonly graph: Graph;
  /** The NBD server, while started. */
  nbd: NbdServer | null = null;
  /** Drives made with `--drive` (our extension), by device id. */
  readonly drives: Map<string, DaemonDrive> = new Map();
  /** The QMP commands, by name. */
  readonly commands: Map<string, QmpCommand> = new Map();
  readonly #closeables = new Set<Closeable>();
  #quit: () => void = () => {};
  /** Resolves when a client sent `quit` (or {@link Daemon.requestQuit} was called). */
  readonly quitRequested: Promise<void>;
  #shutdown: Promise<void> | null = null;
  #chain: Promise<unknown> = Promise.resolve();

  /** Creates a daemon over `graph` (default: every driver of `@blockgraph/drivers`). */
  constructor(graph?: Graph) {
    this.graph = graph ?? new Graph({ registry: defaultRegistry() });
    this.quitRequested = new Promise<void>((r) => (this.#quit = r));
  }

  /** Adds commands to the table; a second command of the same name is refused. */
  register(commands: readonly QmpCommand[]): void {
    for (const c of commands) {
      if (this.commands.has(c.name)) throw new Error(`QMP command '${c.name}' registered twice`);
      this.commands.set(c.name, c);
    }
  }

  /** Runs `fn` after every command queued before it: commands run one at a time. */
  serialize<T>(fn: () => Promise<T>): Promise<T> {
    const p = this.#chain.then(fn);
    this.#chain = p.catch(() => {});
    return p;
  }

  /** Asks the daemon to stop (QMP `quit`, a signal). */
  requestQuit(): void {
    this.#quit();
  }

  /** Registers something to close at shutdown (before the graph closes). */
  addCloseable(c: Closeable): void {
    this.#closeables.add(c);
  }

  /** Forgets a closeable that closed by itself. */
  removeCloseable(c: Closeable): void {
    this.#closeables.delete(c);
  }

  /**
   * The drive a media command names: `device` is a Backend's name, `id` a device id; QEMU's
   * checks and messages ("Need exactly one of 'device' and 'id'", DeviceNotFound).
   */
  findDrive(device: string | undefined, id: string | undefined): Backend {
    if ((device === undefined) === (id === undefined)) {
      throw new QmpError("GenericError", "Need exactly one of 'device' and 'id'");
    }
    if (id !== undefined) {
      const d = this.drives.get(id);
      if (!d) throw new QmpError("DeviceNotFound", `Device '${id}' not found`);
      return d.backend;
    }
    const b = this.graph.findBackend(device!);
    if (!b) throw new QmpError("DeviceNotFound", `Device '${device}' not found`);
    return b;
  }

  /**
   * Shuts down as qemu-storage-daemon does: stop the monitors and the NBD server (its
   * exports are deleted and their clients disconnected), then `closeAll` (jobs cancelled,
   * everything drained and flushed, every node closed), then detach the drives' devices.
   * Calling it again returns the same promise.
   */
  shutdown(): Promise<void> {
    this.#shutdown ??= this.#doShutdown();
    return this.#shutdown;
  }

  async #doShutdown(): Promise<void> {
    const errors: unknown[] = [];
    const attempt = async (fn: () => Promise<void>) => {
      try {
        await fn();
      } catch (e) {
        errors.push(e);
      }
    };
    for (const c of [...this.#closeables]) await attempt(() => c.close());
    this.#closeables.clear();
    const nbd = this.nbd;
    this.nbd = null;
    if (nbd) await attempt(() => nbd.stop());
    await attempt(() => this.graph.closeAll());
    for (const d of [...this.drives.values()]) await attempt(() => d.remove());
    this.drives.clear();
    if (errors.length > 0) throw BlockError.from(errors[0], { op: "shutdown" });
  }
}
