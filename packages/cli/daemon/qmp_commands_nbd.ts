/**
 * NBD and export commands: `nbd-server-start`, `nbd-server-stop`, `block-export-add`,
 * `block-export-del`, `query-block-exports`. The same functions serve `--nbd-server` and
 * `--export` on the command line, where values are key=value strings.
 *
 * @module
 */

import { BlockError, isWellFormedName } from "@blockgraph/core";
import { NbdServer, type NbdServerAddress } from "@blockgraph/devices";
import type { X509Creds } from "@blockgraph/drivers/nbd";
import type { Daemon, QmpCommand } from "./daemon.ts";
import { type ArgsSchema, checkArgs, type CheckOptions } from "./qmp_args.ts";
import { genericError } from "./qmp_error.ts";
import { checkTlsAuthz, serverTlsCreds } from "./qmp_commands_objects.ts";
import { DAEMON_PROG } from "./daemon_options.ts";
import { checkBitmapList } from "./qmp_commands_bitmaps.ts";

const INET_DATA: ArgsSchema = {
  host: "str",
  port: "any",
  "*numeric": "bool",
  "*to": "uint16",
  "*ipv4": "bool",
  "*ipv6": "bool",
  "*keep-alive": "bool",
};
const UNIX_DATA: ArgsSchema = { path: "str", "*abstract": "bool", "*tight": "bool" };
const ADDRESS_TYPES = ["inet", "unix", "vsock", "fd"];

/**
 * Reads a SocketAddress: QEMU's legacy form `{type, data: {...}}` (what nbd-server-start
 * takes) or the flat form `{type, host, port}` / `{type, path}` (what `--nbd-server addr.*`
 * takes). Only inet and unix sockets are served.
 */
export function parseSocketAddress(
  addr: Record<string, unknown>,
  opts: CheckOptions & { legacy: boolean },
): NbdServerAddress {
  const prefix = opts.prefix ?? "addr.";
  // The member that picks the union's branch, checked as QEMU's visitor checks an enum.
  const type = checkArgs({ type: addr.type }, { type: ADDRESS_TYPES }, { ...opts, prefix })
    .type as string;
  let members: Record<string, unknown>;
  let at = prefix;
  if (opts.legacy) {
    const a = checkArgs(addr, { type: "str", data: "object" }, { ...opts, prefix });
    members = a.data as Record<string, unknown>;
    at = `${prefix}data.`;
  } else {
    members = { ...addr };
    delete members.type;
  }
  if (type !== "inet" && type !== "unix") {
    throw genericError(`Socket address type '${type}' is not supported by the NBD server`);
  }
  const checked = checkArgs(members, type === "inet" ? INET_DATA : UNIX_DATA, {
    ...opts,
    prefix: at,
  });
  if (type === "unix") return { type, path: checked.path as string };
  const port = checked.port;
  if (typeof port !== "string" && typeof port !== "number") {
    throw genericError(`Invalid parameter type for '${at}port', expected: string`);
  }
  return { type, host: checked.host as string, port };
}

async function removeStaleSocket(path: string): Promise<void> {
  try {
    const st = await Deno.lstat(path);
    if (st.isSocket) await Deno.remove(path);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
}

/** nbd-server-start: starts the daemon's NBD server at `addr`. */
export async function nbdServerStart(
  daemon: Daemon,
  addr: NbdServerAddress,
  maxConnections = 0,
  tlsCreds: X509Creds | null = null,
  tlsAuthz: ((distinguishedName: string) => void) | null = null,
): Promise<NbdServer> {
  if (daemon.nbd) throw genericError("NBD server already running");
  if (addr.type === "unix") await removeStaleSocket(addr.path);
  const server = new NbdServer({
    addr,
    maxConnections,
    ...(tlsCreds ? { tlsCreds } : {}),
    ...(tlsAuthz ? { tlsAuthz } : {}),
    log: (message) => console.error(`${DAEMON_PROG}: ${message}`),
  });
  try {
    server.start();
  } catch (e) {
    const err = BlockError.from(e);
    if (e instanceof BlockError) throw e;
    const where = addr.type === "unix" ? ` to ${addr.path}` : "";
    throw genericError(
      `Failed to bind socket${where}: ${err.message.replace(/ \(os error.*$/, "")}`,
    );
  }
  daemon.nbd = server;
  return server;
}

const SERVER_ARGS: ArgsSchema = {
  addr: "object",
  "*tls-creds": "str",
  "*tls-authz": "str",
  "*max-connections": "uint32",
};

/** Starts the NBD server from nbd-server-start (`legacy`) or `--nbd-server` arguments. */
export async function nbdServerStartArgs(
  daemon: Daemon,
  args: Record<string, unknown>,
  opts: CheckOptions & { legacy: boolean },
): Promise<NbdServer> {
  const a = checkArgs(args, SERVER_ARGS, opts);
  const raw = a.addr as Record<string, unknown>;
  // nbd-server-start takes the legacy form; a flat address (members beside `type` and no
  // `data`) is accepted too, as `--nbd-server` spells it.
  const legacy = opts.legacy && ("data" in raw || Object.keys(raw).length === 1);
  const addr = parseSocketAddress(raw, { ...opts, legacy, prefix: "addr." });
  const credsId = a["tls-creds"] as string | undefined;
  const creds = credsId === undefined ? null : await serverTlsCreds(daemon, credsId);
  // As QEMU 7.2: taken without tls-creds (then unused), looked up for each client.
  const authzId = a["tls-authz"] as string | undefined;
  const authz = authzId === undefined ? null : (dn: string) => checkTlsAuthz(daemon, authzId, dn);
  return await nbdServerStart(
    daemon,
    addr,
    (a["max-connections"] as number | undefined) ?? 0,
    creds,
    authz,
  );
}

const EXPORT_BASE: ArgsSchema = {
  type: ["nbd", "vhost-user-blk", "fuse", "vduse-blk"],
  id: "str",
  "*fixed-iothread": "bool",
  "*iothread": "str",
  "node-name": "str",
  "*writable": "bool",
  "*writethrough": "bool",
};

/** The members of each export type after the common ones (QEMU 7.2's BlockExportOptions). */
const EXPORT_TYPE_ARGS: Readonly<Record<string, ArgsSchema>> = {
  nbd: {
    "*name": "str",
    "*description": "str",
    "*bitmaps": "any",
    "*allocation-depth": "bool",
  },
  "vhost-user-blk": { addr: "object", "*logical-block-size": "uint64", "*num-queues": "uint16" },
  fuse: { mountpoint: "str", "*growable": "bool", "*allow-other": ["off", "on", "auto"] },
  "vduse-blk": {
    name: "str",
    "*num-queues": "uint16",
    "*queue-size": "uint16",
    "*logical-block-size": "uint64",
    "*serial": "str",
  },
};

/**
 * block-export-add (and `--export`): an NBD export of a node on the running server. The
 * checks come in QEMU 7.2's order (blk_exp_add, then nbd_export_create).
 */
export async function blockExportAdd(
  daemon: Daemon,
  args: Record<string, unknown>,
  opts: CheckOptions = {},
): Promise<void> {
  const type = checkArgs({ type: args.type }, { type: EXPORT_BASE.type! }, opts).type as string;
  const a = checkArgs(args, { ...EXPORT_BASE, ...EXPORT_TYPE_ARGS[type] }, opts);
  const bitmaps = a.bitmaps === undefined
    ? undefined
    : checkBitmapList(a.bitmaps, "bitmaps", opts.keyval ?? false);
  const id = a.id as string;
  if (!isWellFormedName(id)) throw genericError("Invalid block export id");
  if (daemon.nbd?.exportById(id)) {
    throw genericError(`Block export id '${id}' is already in use`);
  }
  if (type !== "nbd") throw genericError("No driver found for the requested export type");
  const nodeName = a["node-name"] as string;
  const node = daemon.graph.findNode(nodeName);
  if (!node) throw genericError(`Cannot find device='' nor node-name='${nodeName}'`);
  if (a.writable === true && !node.writable) {
    throw genericError("Cannot export read-only node as writable");
  }
  if (a.iothread !== undefined) throw genericError(`iothread "${a.iothread}" not found`);
  const server = daemon.nbd;
  if (!server) throw genericError("NBD server not running");
  const exp = await server.addExport(daemon.graph, {
    id,
    "node-name": nodeName,
    ...(a.name === undefined ? {} : { name: a.name as string }),
    ...(a.writable === undefined ? {} : { writable: a.writable as boolean }),
    ...(a.description === undefined ? {} : { description: a.description as string }),
    ...(bitmaps === undefined ? {} : { bitmaps }),
    ...(a["allocation-depth"] === undefined
      ? {}
      : { "allocation-depth": a["allocation-depth"] as boolean }),
  });
  if (a.writethrough === true) exp.backend.enableWriteCache = false;
}

/** The NBD and export commands. */
export const nbdCommands: readonly QmpCommand[] = [
  {
    name: "nbd-server-start",
    args: null,
    async run(args, { daemon }) {
      await nbdServerStartArgs(daemon, args, { legacy: true });
      return {};
    },
  },
  {
    name: "nbd-server-stop",
    args: {},
    async run(_args, { daemon }) {
      const server = daemon.nbd;
      if (!server) throw genericError("NBD server not running");
      daemon.nbd = null;
      await server.stop();
      return {};
    },
  },
  {
    name: "block-export-add",
    args: null,
    async run(args, { daemon }) {
      await blockExportAdd(daemon, args);
      return {};
    },
  },
  {
    name: "block-export-del",
    args: { id: "str", "*mode": ["safe", "hard"] },
    run(args, { daemon }) {
      const id = args.id as string;
      const server = daemon.nbd;
      if (!server?.exportById(id)) throw genericError(`Export '${id}' is not found`);
      // The reply goes before the deletion's end and its event, as QEMU's does.
      server.requestDelete(id, args.mode === "hard").catch(() => {});
      return {};
    },
  },
  {
    name: "query-block-exports",
    args: {},
    run: (_args, { daemon }) => daemon.nbd?.queryExports() ?? [],
  },
];
