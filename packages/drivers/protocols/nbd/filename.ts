/**
 * NBD URIs as QEMU takes them: `nbd://host[:port]/name`, `nbd+tcp://...`, and
 * `nbd+unix:///name?socket=PATH`, turned into the driver's `server.*` and `export` options.
 *
 * @module
 */

import { BlockError, type OptionValues } from "@blockgraph/core";
import { NBD_DEFAULT_PORT } from "./constants.ts";

/**
 * Parses an NBD URI into options (`server.type`, `server.host`, `server.port` or
 * `server.path`, and `export` when a name is given).
 *
 * @example
 * ```ts
 * import { parseNbdFilename } from "@blockgraph/drivers";
 * const o = parseNbdFilename("nbd+unix:///disk?socket=/tmp/nbd.sock");
 * console.assert(o["server.path"] === "/tmp/nbd.sock" && o.export === "disk");
 * ```
 */
export function parseNbdFilename(filename: string): OptionValues {
  const m = /^nbd(\+tcp|\+unix)?:\/\/([^/?#]*)(\/[^?#]*)?(\?[^#]*)?$/.exec(filename);
  if (!m) throw new BlockError("EINVAL", `Invalid NBD URI '${filename}'`);
  const transport = m[1] ?? "+tcp";
  const authority = m[2] ?? "";
  const path = m[3] ?? "";
  const query = new URLSearchParams(m[4]?.slice(1) ?? "");
  const out: OptionValues = {};
  const name = decodeURIComponent(path.replace(/^\//, ""));
  if (name !== "") out["export"] = name;
  if (transport === "+unix") {
    const socket = query.get("socket");
    if (authority !== "" || socket === null || [...query.keys()].length !== 1) {
      throw new BlockError("EINVAL", `NBD URI '${filename}' needs just ?socket=PATH and no host`);
    }
    out["server.type"] = "unix";
    out["server.path"] = socket;
    return out;
  }
  if ([...query.keys()].length > 0) {
    throw new BlockError("EINVAL", `NBD URI '${filename}' takes no query over TCP`);
  }
  const hp = /^(?:\[([^\]]+)\]|([^:]*))(?::(\d+))?$/.exec(authority);
  const host = hp?.[1] ?? hp?.[2] ?? "";
  if (!hp || host === "") throw new BlockError("EINVAL", `NBD URI '${filename}' has no host`);
  out["server.type"] = "inet";
  out["server.host"] = host;
  out["server.port"] = hp[3] ?? String(NBD_DEFAULT_PORT);
  return out;
}

/** The URI of an export, as `info` shows the node's filename. */
export function nbdFilename(
  server: { type: "inet"; host: string; port: string } | { type: "unix"; path: string },
  name: string,
): string {
  const exp = name === "" ? "" : `/${encodeURIComponent(name)}`;
  if (server.type === "unix") return `nbd+unix://${exp}?socket=${server.path}`;
  const host = server.host.includes(":") ? `[${server.host}]` : server.host;
  return `nbd://${host}:${server.port}${exp}`;
}
