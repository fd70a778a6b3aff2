/**
 * `blockgraph daemon`: builds the daemon from its command line (in order, as
 * qemu-storage-daemon does), serves until `quit`, SIGINT or SIGTERM, then shuts down
 * through `closeAll` and exits 0. A bad option prints qemu-storage-daemon's message and
 * exits 1.
 *
 * @module
 */

import type { Graph } from "@blockgraph/core";
import type { CliIo } from "../common/cli_io.ts";
import { Daemon } from "./daemon.ts";
import {
  DAEMON_PROG,
  DAEMON_USAGE,
  type DaemonAction,
  DaemonOptionError,
  parseDaemonArgs,
} from "./daemon_options.ts";
import { defaultBanner, prepareDefault } from "./default_config.ts";
import { DaemonDrive } from "./drive.ts";
import { QmpMonitor } from "./monitor.ts";
import { bitmapCommands } from "./qmp_commands_bitmaps.ts";
import { coreCommands } from "./qmp_commands_core.ts";
import { versionText } from "../common/version.ts";
import { mediaCommands } from "./qmp_commands_media.ts";
import { blockExportAdd, nbdCommands, nbdServerStartArgs } from "./qmp_commands_nbd.ts";
import { objectAdd, objectCommands } from "./qmp_commands_objects.ts";
import { blockdevAdd, nodeCommands } from "./qmp_commands_nodes.ts";
import { checkBlockdevOptions } from "./blockdev_schema.ts";

/** A daemon with every QMP command registered. */
export function createDaemon(graph?: Graph): Daemon {
  const d = new Daemon(graph);
  d.register(coreCommands);
  d.register(nodeCommands);
  d.register(mediaCommands);
  d.register(nbdCommands);
  d.register(objectCommands);
  d.register(bitmapCommands);
  return d;
}

/** Opens a QMP monitor at `path` and registers it for shutdown. */
export function addMonitor(daemon: Daemon, path: string): QmpMonitor {
  const m = new QmpMonitor(daemon, path);
  daemon.addCloseable(m);
  return m;
}

/** The unix socket chardevs defined so far, by id. */
type Chardevs = Map<string, string>;

function defineChardev(chardevs: Chardevs, o: Record<string, string>): void {
  const backend = o.backend;
  if (backend === undefined) throw new Error("Parameter 'backend' is missing");
  if (o.id === undefined) throw new Error("Parameter 'id' is missing");
  if (backend !== "socket") {
    throw new Error(`chardev backend '${backend}' is not supported (only 'socket')`);
  }
  for (const k of Object.keys(o)) {
    if (!["backend", "id", "path", "server", "wait"].includes(k)) {
      throw new Error(`Invalid parameter '${k}'`);
    }
  }
  if (o.path === undefined) {
    throw new Error("chardev: socket: only unix sockets are supported: 'path' is missing");
  }
  if (o.server !== "on") {
    throw new Error(`Failed to connect to '${o.path}': only server=on sockets are supported`);
  }
  if (o.wait !== undefined && o.wait !== "off") {
    throw new Error("wait=on is not supported: use wait=off");
  }
  if (chardevs.has(o.id)) {
    throw new Error(`attempt to add duplicate property '${o.id}' to object (type 'container')`);
  }
  chardevs.set(o.id, o.path);
}

/** Applies one command-line option to `daemon`. */
export async function applyAction(
  daemon: Daemon,
  action: DaemonAction,
  chardevs: Chardevs = new Map(),
): Promise<void> {
  switch (action.kind) {
    case "blockdev":
      // Typed as QEMU types them: key=value text by its keyval visitor, JSON as it is.
      await blockdevAdd(
        daemon.graph,
        checkBlockdevOptions(daemon.graph.registry, action.options, {
          keyval: !action.text.trimStart().startsWith("{"),
        }),
      );
      return;
    case "object":
      await objectAdd(daemon, action.options, { keyval: true });
      return;
    case "chardev":
      defineChardev(chardevs, action.options);
      return;
    case "monitor": {
      const o = action.options;
      const id = o.chardev;
      if (id === undefined) throw new Error("Parameter 'chardev' is missing");
      if (o.mode !== undefined && o.mode !== "control") throw new Error("Only QMP is supported");
      if (o.pretty !== undefined && o.pretty !== "off") {
        throw new Error("pretty=on is not supported");
      }
      const path = chardevs.get(id);
      if (path === undefined) throw new Error(`chardev "${id}" not found`);
      addMonitor(daemon, path);
      return;
    }
    case "monitor-path":
      addMonitor(daemon, action.path);
      return;
    case "nbd-server":
      await nbdServerStartArgs(daemon, action.options, { legacy: false, keyval: true });
      return;
    case "export":
      await blockExportAdd(daemon, action.options, { keyval: true });
      return;
    case "drive": {
      const id = action.options.id;
      if (typeof id === "string" && daemon.drives.has(id)) {
        throw new Error(`Duplicate ID '${id}' for device`);
      }
      const drive = await DaemonDrive.create(daemon.graph, action.options);
      daemon.drives.set(drive.id, drive);
      return;
    }
  }
}

/** How {@link runDaemon} runs. */
export interface RunDaemonOptions {
  /** Stop on SIGINT and SIGTERM (default true). */
  signals?: boolean;
  /** Called once the daemon is serving. */
  onReady?: () => void;
}

/** Runs `blockgraph daemon` with `args` (after `daemon`); returns the exit status. */
export async function runDaemon(
  args: readonly string[],
  io: CliIo,
  options: RunDaemonOptions = {},
): Promise<number> {
  let cmd;
  try {
    cmd = parseDaemonArgs(args);
  } catch (e) {
    io.err(`${DAEMON_PROG}: ${(e as Error).message}\n`);
    return 1;
  }
  if (cmd.help) {
    io.out(DAEMON_USAGE);
    return 0;
  }
  if (cmd.version) {
    io.out(versionText("qemu-storage-daemon"));
    return 0;
  }
  const daemon = createDaemon();
  let banner = "";
  let status = 0;
  const chardevs: Chardevs = new Map();
  try {
    const actions = [...cmd.actions];
    if (cmd.useDefault) {
      const setup = await prepareDefault(daemon.graph.registry);
      actions.unshift(...setup.actions);
      banner = defaultBanner(setup);
    }
    for (const a of actions) {
      try {
        await applyAction(daemon, a, chardevs);
      } catch (e) {
        throw new DaemonOptionError((e as Error).message, a.kind.replace("-path", ""), a.text);
      }
    }
    if (cmd.pidfile !== undefined) await Deno.writeTextFile(cmd.pidfile, `${Deno.pid}\n`);
  } catch (e) {
    io.err(`${DAEMON_PROG}: ${(e as Error).message}\n`);
    await daemon.shutdown().catch(() => {});
    return 1;
  }
  const stop = () => daemon.requestQuit();
  const signals: Deno.Signal[] = options.signals === false ? [] : ["SIGINT", "SIGTERM"];
  for (const s of signals) Deno.addSignalListener(s, stop);
  if (banner) io.out(banner);
  options.onReady?.();
  try {
    await daemon.quitRequested;
    await daemon.shutdown();
  } catch (e) {
    io.err(`${DAEMON_PROG}: shutdown failed: ${(e as Error).message}\n`);
    status = 1;
  } finally {
    for (const s of signals) Deno.removeSignalListener(s, stop);
    if (cmd.pidfile !== undefined) await Deno.remove(cmd.pidfile).catch(() => {});
  }
  return status;
}
