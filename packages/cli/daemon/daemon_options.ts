/**
 * `blockgraph daemon`'s command line: qemu-storage-daemon's options and shapes (`--blockdev`
 * JSON or key=value, `--chardev socket,...`, `--monitor [chardev=]ID`, `--nbd-server`,
 * `--export [type=]nbd,...`, `--pidfile`), applied in order as qemu-storage-daemon applies
 * them, plus our extensions: `--monitor PATH` (a value with a `/` and no `=`: a QMP socket
 * at PATH), `--drive` (a drive with a tray, see drive.ts) and `--default` (the embedded
 * configuration `deno task start` runs).
 *
 * @module
 */

import { parseKeyValue, parseQemuJson, unflatten } from "@blockgraph/core";
import { getopt, glibcMessage } from "../common/getopt.ts";

/** The program name in messages. */
export const DAEMON_PROG = "blockgraph daemon";

/** One option to apply, in command-line order. */
export type DaemonAction =
  | { kind: "blockdev"; text: string; options: Record<string, unknown> }
  | { kind: "chardev"; text: string; options: Record<string, string> }
  | { kind: "monitor"; text: string; options: Record<string, string> }
  | { kind: "monitor-path"; text: string; path: string }
  | { kind: "nbd-server"; text: string; options: Record<string, unknown> }
  | { kind: "export"; text: string; options: Record<string, unknown> }
  | { kind: "drive"; text: string; options: Record<string, unknown> }
  | { kind: "object"; text: string; options: Record<string, unknown> };

/** What the command line asks for. */
export interface DaemonCommandLine {
  /** `-h`/`--help`. */
  help: boolean;
  /** `-V`/`--version`. */
  version: boolean;
  /** `--default`: run the embedded default configuration. */
  useDefault: boolean;
  /** `--pidfile`. */
  pidfile: string | undefined;
  /** The options to apply, in order. */
  actions: DaemonAction[];
}

/** A command-line error: the message qemu-storage-daemon prints (without the program name). */
export class DaemonOptionError extends Error {
  /** Creates the error; `option` and `text` prefix it as `--option text: `. */
  constructor(message: string, option?: string, text?: string) {
    super(option === undefined ? message : `--${option} ${text}: ${message}`);
    this.name = "DaemonOptionError";
  }
}

/** The usage text. */
export const DAEMON_USAGE = `Usage: blockgraph daemon [options]
blockgraph storage daemon (speaks qemu-storage-daemon's command line and QMP)

  -h, --help             display this help and exit
  -V, --version          output version information and exit

  --blockdev [driver=]<driver>[,node-name=<N>][,discard=ignore|unmap]
             [,cache.direct=on|off][,cache.no-flush=on|off]
             [,read-only=on|off][,auto-read-only=on|off]
             [,force-share=on|off][,detect-zeroes=on|off|unmap]
             [,driver specific parameters...]    (or a JSON object)
                         configure a block node

  --chardev socket,id=<id>,path=<path>,server=on,wait=off
                         a unix socket for a QMP monitor

  --export [type=]nbd,id=<id>,node-name=<node-name>[,name=<export-name>]
           [,writable=on|off][,description=<text>][,bitmaps.<n>=<bitmap>]
                         export the specified block node over NBD
                         (requires --nbd-server)

  --monitor [chardev=]name[,mode=control]
                         configure a QMP monitor
  --monitor <path>       a QMP monitor on a unix socket at <path> (a path with
                         a '/', e.g. ./qmp.sock; blockgraph's shorthand)

  --nbd-server addr.type=inet,addr.host=<host>,addr.port=<port>
               [,tls-creds=<id>][,max-connections=<n>]
  --nbd-server addr.type=unix,addr.path=<path>[,tls-creds=<id>]
               [,max-connections=<n>]
                         start an NBD server for exporting block nodes

  --object tls-creds-x509,id=<id>,endpoint=server|client,dir=<dir>
           [,verify-peer=on|off]
                         x509 credentials (ca-cert.pem, server-cert.pem and
                         server-key.pem, or client-cert.pem and client-key.pem
                         in <dir>) for --nbd-server tls-creds and nbd nodes

  --pidfile <path>       write process ID to a file after startup

blockgraph's extensions:
  --drive id=<id>[,node-name=<N>][,name=<backend-name>][,removable=on|off]
          [,read-only=on|off]
                         a drive with a tray (removable=on, the default) or a
                         fixed disk, for the media commands (blockdev-open-tray,
                         eject, blockdev-change-medium, ...)
  --default              serve the default disk: ./data (or $BLOCKGRAPH_DATA),
                         NBD on 127.0.0.1, a QMP socket beside the disk
`;

function keyval(text: string, implied: string | undefined, option: string) {
  try {
    return parseKeyValue(text, implied);
  } catch (e) {
    throw new DaemonOptionError((e as Error).message, option, text);
  }
}

function nested(text: string, implied: string | undefined, option: string) {
  const flat = keyval(text, implied, option);
  try {
    return unflatten(flat) as Record<string, unknown>;
  } catch (e) {
    throw new DaemonOptionError((e as Error).message, option, text);
  }
}

/**
 * Parses the daemon's arguments (after `daemon`). Throws {@link DaemonOptionError} with
 * qemu-storage-daemon's message for a bad option.
 *
 * @example
 * ```ts
 * import { parseDaemonArgs } from "./daemon_options.ts";
 * const c = parseDaemonArgs(["--blockdev", "null-co,node-name=n0"]);
 * console.assert(c.actions[0]!.kind === "blockdev");
 * ```
 */
export function parseDaemonArgs(args: readonly string[]): DaemonCommandLine {
  const r = getopt(args, "+:hT:V", [
    { name: "help", arg: "none", key: "h" },
    { name: "trace", arg: "required", key: "T" },
    { name: "version", arg: "none", key: "V" },
    { name: "blockdev", arg: "required", key: "blockdev" },
    { name: "chardev", arg: "required", key: "chardev" },
    { name: "daemonize", arg: "none", key: "daemonize" },
    { name: "export", arg: "required", key: "export" },
    { name: "monitor", arg: "required", key: "monitor" },
    { name: "nbd-server", arg: "required", key: "nbd-server" },
    { name: "object", arg: "required", key: "object" },
    { name: "pidfile", arg: "required", key: "pidfile" },
    { name: "drive", arg: "required", key: "drive" },
    { name: "default", arg: "none", key: "default" },
  ]);
  const out: DaemonCommandLine = {
    help: false,
    version: false,
    useDefault: false,
    pidfile: undefined,
    actions: [],
  };
  for (const o of r.options) {
    const text = o.value ?? "";
    switch (o.key) {
      case "h":
        out.help = true;
        return out;
      case "V":
        out.version = true;
        return out;
      case "T":
        throw new DaemonOptionError("tracing is not supported by blockgraph", "trace", text);
      case "daemonize":
        throw new DaemonOptionError("--daemonize is not supported by blockgraph");
      case "object":
        out.actions.push({ kind: "object", text, options: keyval(text, "qom-type", "object") });
        break;
      case "pidfile":
        out.pidfile = text;
        break;
      case "default":
        out.useDefault = true;
        break;
      case "blockdev": {
        let options: Record<string, unknown>;
        if (text.trimStart().startsWith("{")) {
          let v;
          try {
            v = parseQemuJson(text);
          } catch (e) {
            throw new DaemonOptionError((e as Error).message, "blockdev", text);
          }
          if (typeof v !== "object" || v === null || Array.isArray(v)) {
            throw new DaemonOptionError("JSON parse error, expecting an object", "blockdev", text);
          }
          options = v;
        } else {
          options = nested(text, "driver", "blockdev");
        }
        out.actions.push({ kind: "blockdev", text, options });
        break;
      }
      case "chardev":
        out.actions.push({ kind: "chardev", text, options: keyval(text, "backend", "chardev") });
        break;
      case "monitor":
        if (!text.includes("=") && text.includes("/")) {
          out.actions.push({ kind: "monitor-path", text, path: text });
        } else {
          out.actions.push({ kind: "monitor", text, options: keyval(text, "chardev", "monitor") });
        }
        break;
      case "nbd-server":
        out.actions.push({
          kind: "nbd-server",
          text,
          options: nested(text, undefined, "nbd-server"),
        });
        break;
      case "export":
        out.actions.push({ kind: "export", text, options: nested(text, "type", "export") });
        break;
      case "drive":
        out.actions.push({ kind: "drive", text, options: nested(text, undefined, "drive") });
        break;
    }
  }
  if (r.error) {
    throw new DaemonOptionError(glibcMessage(DAEMON_PROG, r.error).slice(DAEMON_PROG.length + 2));
  }
  if (r.operands.length > 0) throw new DaemonOptionError(`${r.operands[0]}: Unexpected argument`);
  return out;
}
