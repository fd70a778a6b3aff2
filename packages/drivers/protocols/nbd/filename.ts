/**
 * NBD filenames as QEMU 7.2 takes them, turned into the driver's `server.*` and `export`
 * options: the URIs `nbd://host[:port]/name`, `nbd+tcp://...` and
 * `nbd+unix:///name?socket=PATH` (any malformed one: "No valid URL specified"), and the
 * legacy `nbd:HOST:PORT[:exportname=NAME]` and `nbd:unix:PATH[:exportname=NAME]`. And back:
 * the URI a node shows, as QEMU's `nbd_refresh_filename` writes it.
 *
 * @module
 */

import { BlockError, type OptionValues } from "@blockgraph/core";
import { NBD_DEFAULT_PORT } from "./constants.ts";

const NO_URL = "No valid URL specified";

/** Percent-decoding that refuses a malformed escape (as an invalid URI). */
function unescape(text: string): string {
  try {
    return decodeURIComponent(text);
  } catch {
    throw new BlockError("EINVAL", NO_URL);
  }
}

/** `nbd[+tcp|+unix]://...`, as QEMU's nbd_parse_uri. */
function parseUri(filename: string): OptionValues {
  const m = /^([A-Za-z][A-Za-z0-9+.-]*):\/\/([^/?#]*)([^?#]*)(?:\?([^#]*))?(?:#.*)?$/.exec(
    filename,
  );
  if (!m) throw new BlockError("EINVAL", NO_URL);
  const [, scheme, authority = "", path = "", query = ""] = m;
  if (scheme !== "nbd" && scheme !== "nbd+tcp" && scheme !== "nbd+unix") {
    throw new BlockError("EINVAL", NO_URL);
  }
  const unix = scheme === "nbd+unix";
  // userinfo@host:port; the host may be an IPv6 literal in brackets.
  const hp = /^(?:[^@]*@)?(\[[^\]]*\]|[^:]*)(?::(\d*))?$/.exec(authority);
  if (!hp) throw new BlockError("EINVAL", NO_URL);
  const server = hp[1] ?? "";
  const port = hp[2] === undefined || hp[2] === "" ? 0 : Number(hp[2]);
  const out: OptionValues = {};
  const name = unescape(path.replace(/^\//, ""));
  if (name !== "") out["export"] = name;
  const params = query.split(/[&;]/).filter((p) => p !== "").map((p) => {
    const eq = p.indexOf("=");
    return eq < 0 ? [unescape(p), ""] : [unescape(p.slice(0, eq)), unescape(p.slice(eq + 1))];
  });
  if (params.length > 1 || (unix && params.length === 0) || (!unix && params.length > 0)) {
    throw new BlockError("EINVAL", NO_URL);
  }
  if (unix) {
    const [key, value] = params[0]!;
    if (server !== "" || port !== 0 || key !== "socket") {
      throw new BlockError("EINVAL", NO_URL);
    }
    out["server.type"] = "unix";
    out["server.path"] = value!;
    return out;
  }
  if (server === "") throw new BlockError("EINVAL", NO_URL);
  out["server.type"] = "inet";
  out["server.host"] = server.startsWith("[") ? server.slice(1, -1) : unescape(server);
  out["server.port"] = String(port || NBD_DEFAULT_PORT);
  return out;
}

/** QEMU's inet_parse of `HOST:PORT` (or `[V6]:PORT`, `:PORT`), options after a comma aside. */
function parseHostPort(spec: string): { host: string; port: string } {
  const v = spec.split(",")[0] ?? "";
  if (v.startsWith(":")) {
    const port = v.slice(1);
    if (port === "") throw new BlockError("EINVAL", `error parsing port in address '${spec}'`);
    return { host: "", port };
  }
  if (v.startsWith("[")) {
    const m = /^\[([^\]]+)\]:(.+)$/.exec(v);
    if (!m) throw new BlockError("EINVAL", `error parsing IPv6 address '${spec}'`);
    return { host: m[1]!, port: m[2]! };
  }
  const m = /^([^:]+):(.+)$/.exec(v);
  if (!m) throw new BlockError("EINVAL", `error parsing address '${spec}'`);
  return { host: m[1]!, port: m[2]! };
}

/**
 * Parses an NBD filename into options (`server.type`, `server.host`, `server.port` or
 * `server.path`, and `export` when a name is given).
 *
 * @example
 * ```ts
 * import { parseNbdFilename } from "@blockgraph/drivers";
 * const o = parseNbdFilename("nbd+unix:///disk?socket=/tmp/nbd.sock");
 * console.assert(o["server.path"] === "/tmp/nbd.sock" && o.export === "disk");
 * const l = parseNbdFilename("nbd:localhost:10809:exportname=disk");
 * console.assert(l["server.host"] === "localhost" && l.export === "disk");
 * ```
 */
export function parseNbdFilename(filename: string): OptionValues {
  if (filename.includes("://")) return parseUri(filename);
  const out: OptionValues = {};
  let file = filename;
  const at = file.indexOf(":exportname=");
  if (at >= 0) {
    const name = file.slice(at + ":exportname=".length);
    // QEMU leaves the options empty here, and the open then finds no server.
    if (name === "") return out;
    out["export"] = name;
    file = file.slice(0, at);
  }
  if (!file.startsWith("nbd:")) {
    throw new BlockError("EINVAL", "File name string for NBD must start with 'nbd:'");
  }
  const spec = file.slice(4);
  if (spec === "") return out;
  if (spec.startsWith("unix:")) {
    out["server.type"] = "unix";
    out["server.path"] = spec.slice(5);
    return out;
  }
  const { host, port } = parseHostPort(spec);
  out["server.type"] = "inet";
  out["server.host"] = host;
  out["server.port"] = port;
  return out;
}

/**
 * The URI of an export, as `info` shows the node's filename: QEMU's, with the host and the
 * export name as they are (`nbd://::1:10809/a b`), not escaped.
 */
export function nbdFilename(
  server: { type: "inet"; host: string; port: string } | { type: "unix"; path: string },
  name: string,
): string {
  const exp = name === "" ? "" : `/${name}`;
  if (server.type === "unix") return `nbd+unix://${exp}?socket=${server.path}`;
  return `nbd://${server.host}:${server.port}${exp}`;
}
