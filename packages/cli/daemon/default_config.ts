/**
 * The embedded default configuration `deno task start` runs (`blockgraph daemon
 * --default`): a data folder (`$BLOCKGRAPH_DATA`, else `./data` where the user typed the
 * command), a sparse 1 GiB disk created there on first run (qcow2 when the qcow2 driver can
 * create images, else raw; an existing disk is reused whatever its format), exported
 * writable over NBD as `disk` on 127.0.0.1 port 10809 (or the next free port), and a QMP
 * socket `qmp.sock` beside the disk.
 *
 * @module
 */

import type { DriverRegistry } from "@blockgraph/core";
import type { DaemonAction } from "./daemon_options.ts";

/** The NBD port tried first (the IANA port of NBD). */
export const DEFAULT_NBD_PORT = 10809;
/** How many ports after the default are tried when it is taken. */
export const DEFAULT_PORT_TRIES = 100;
/** The size of a newly created default disk. */
export const DEFAULT_DISK_SIZE = 1024 ** 3;
/** The export name of the default disk. */
export const DEFAULT_EXPORT_NAME = "disk";

/** What the default configuration made and will serve. */
export interface DefaultSetup {
  /** The data folder. */
  dataDir: string;
  /** The disk image. */
  diskPath: string;
  /** Its format. */
  format: string;
  /** Whether it was created now. */
  created: boolean;
  /** The NBD port. */
  port: number;
  /** The QMP socket. */
  monitorPath: string;
  /** The options that configure the daemon, as if given on the command line. */
  actions: DaemonAction[];
}

/** Whether 127.0.0.1:`port` can be listened on now. */
export function portIsFree(port: number): boolean {
  try {
    const l = Deno.listen({ hostname: "127.0.0.1", port, transport: "tcp" });
    l.close();
    return true;
  } catch {
    return false;
  }
}

/** The first free port from `first` on (`tries` ports at most). */
export function pickPort(first = DEFAULT_NBD_PORT, tries = DEFAULT_PORT_TRIES): number {
  for (let p = first; p < first + tries; p++) if (portIsFree(p)) return p;
  throw new Error(`No free TCP port on 127.0.0.1 between ${first} and ${first + tries - 1}`);
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
}

/** The data folder: `$BLOCKGRAPH_DATA`, else `./data` (relative to the current directory). */
export function defaultDataDir(): string {
  return Deno.env.get("BLOCKGRAPH_DATA") || "data";
}

/**
 * Prepares the default configuration: makes the data folder and the disk when missing and
 * picks the port.
 */
export async function prepareDefault(
  registry: DriverRegistry,
  dataDir = defaultDataDir(),
): Promise<DefaultSetup> {
  await Deno.mkdir(dataDir, { recursive: true });
  const qcow2 = registry.find("qcow2");
  const candidates = [`${dataDir}/disk.qcow2`, `${dataDir}/disk.raw`];
  let diskPath = "";
  let format = "";
  let created = false;
  for (const c of candidates) {
    if (await exists(c)) {
      diskPath = c;
      format = c.endsWith(".qcow2") ? "qcow2" : "raw";
      break;
    }
  }
  if (!diskPath) {
    const fmt = qcow2?.create ? qcow2 : registry.get("raw");
    format = fmt.name;
    diskPath = format === "qcow2" ? candidates[0]! : candidates[1]!;
    if (!fmt.create) throw new Error(`Format driver '${format}' does not support image creation`);
    await fmt.create({ filename: diskPath, size: DEFAULT_DISK_SIZE }, registry);
    created = true;
  }
  const port = pickPort();
  const monitorPath = `${dataDir}/qmp.sock`;
  const blockdev = {
    driver: format,
    "node-name": "disk0",
    file: { driver: "file", filename: diskPath },
  };
  const nbd = `addr.type=inet,addr.host=127.0.0.1,addr.port=${port}`;
  const exp = `type=nbd,id=export0,node-name=disk0,name=${DEFAULT_EXPORT_NAME},writable=on`;
  return {
    dataDir,
    diskPath,
    format,
    created,
    port,
    monitorPath,
    actions: [
      { kind: "blockdev", text: JSON.stringify(blockdev), options: blockdev },
      {
        kind: "nbd-server",
        text: nbd,
        options: { addr: { type: "inet", host: "127.0.0.1", port: String(port) } },
      },
      {
        kind: "export",
        text: exp,
        options: {
          type: "nbd",
          id: "export0",
          "node-name": "disk0",
          name: DEFAULT_EXPORT_NAME,
          writable: "on",
        },
      },
      { kind: "monitor-path", text: monitorPath, path: monitorPath },
    ],
  };
}

/** What the daemon prints once the default configuration is up: how to connect. */
export function defaultBanner(s: DefaultSetup): string {
  const url = `nbd://127.0.0.1:${s.port}/${DEFAULT_EXPORT_NAME}`;
  const portNote = s.port === DEFAULT_NBD_PORT
    ? ""
    : ` (port ${DEFAULT_NBD_PORT} was taken; using ${s.port})`;
  return `blockgraph daemon: serving ${s.diskPath} (${s.format}${
    s.created ? ", created now" : ""
  }) as NBD export '${DEFAULT_EXPORT_NAME}' on 127.0.0.1:${s.port}${portNote}\n` +
    `  qemu-img info ${url}\n` +
    `  nbdinfo ${url}\n` +
    `  qemu-io -f raw ${url}\n` +
    `  QMP monitor: ${s.monitorPath}  (e.g. socat - UNIX-CONNECT:${s.monitorPath})\n` +
    `Stop with Ctrl-C (SIGINT) or SIGTERM; everything is flushed and closed first.\n`;
}
