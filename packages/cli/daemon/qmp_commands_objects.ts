/**
 * User-creatable objects, as far as NBD needs them: QEMU's `tls-creds-x509` (`--object
 * tls-creds-x509,id=ID,endpoint=server|client,dir=DIR[,verify-peer=on|off]`, QMP `object-add`
 * and `object-del`), named by `tls-creds` on the NBD server and on `nbd` nodes, and
 * `authz-simple` (`--object authz-simple,id=ID,identity=DN`), named by the server's
 * `tls-authz`. As in QEMU the server looks its authz object up for each client, so one may
 * be deleted (clients are then refused) or added after the server started.
 *
 * @module
 */

import { loadX509Creds, type X509Creds } from "@blockgraph/drivers/nbd";
import type { Daemon, QmpCommand } from "./daemon.ts";
import { type ArgsSchema, checkArgs, type CheckOptions } from "./qmp_args.ts";
import { genericError } from "./qmp_error.ts";

const X509_ARGS: ArgsSchema = {
  "qom-type": "str",
  id: "str",
  "*endpoint": ["client", "server"],
  "*dir": "str",
  "*verify-peer": "bool",
};

const AUTHZ_ARGS: ArgsSchema = { "qom-type": "str", id: "str", identity: "str" };

/** object-add (and `--object`): `tls-creds-x509` and `authz-simple` objects exist here. */
export async function objectAdd(
  daemon: Daemon,
  args: Record<string, unknown>,
  opts: CheckOptions = {},
): Promise<void> {
  const type = args["qom-type"];
  if (type !== undefined && type !== "tls-creds-x509" && type !== "authz-simple") {
    throw genericError(
      `Invalid parameter '${String(type)}': only tls-creds-x509 and authz-simple are supported`,
    );
  }
  const duplicate = (id: string) => {
    if (daemon.tlsCreds.has(id) || daemon.authz.has(id)) {
      throw genericError(`attempt to add duplicate property '${id}' to object (type 'container')`);
    }
  };
  if (type === "authz-simple") {
    const a = checkArgs(args, AUTHZ_ARGS, opts);
    duplicate(a.id as string);
    daemon.authz.set(a.id as string, a.identity as string);
    return;
  }
  const a = checkArgs(args, X509_ARGS, opts);
  const id = a.id as string;
  duplicate(id);
  const dir = a.dir as string | undefined;
  if (dir === undefined) throw genericError("Parameter 'dir' is missing");
  let creds: X509Creds;
  try {
    creds = await loadX509Creds({
      id,
      endpoint: (a.endpoint as "client" | "server" | undefined) ?? "client",
      dir,
      verifyPeer: (a["verify-peer"] as boolean | undefined) ?? true,
    });
  } catch (e) {
    throw genericError((e as Error).message);
  }
  daemon.tlsCreds.set(id, creds);
}

/**
 * The server's `tls-authz` check for the object `id` (QEMU's authz-simple): throws QEMU's
 * messages unless `dn` is the object's identity.
 */
export function checkTlsAuthz(daemon: Daemon, id: string, dn: string): void {
  const identity = daemon.authz.get(id);
  if (identity === undefined) throw genericError(`Cannot find QAuthZ object ID ${id}`);
  if (identity !== dn) throw genericError(`TLS x509 authz check for ${dn} is denied`);
}

/**
 * The credentials `id` names, which must be for `endpoint` (QEMU's messages: "No TLS
 * credentials with id 'tls0'", "Expected TLS credentials for a server endpoint").
 */
export function findTlsCreds(daemon: Daemon, id: string, endpoint: "server" | "client"): X509Creds {
  const creds = daemon.tlsCreds.get(id);
  if (!creds) throw genericError(`No TLS credentials with id '${id}'`);
  if (creds.endpoint !== endpoint) {
    throw genericError(`Expected TLS credentials for a ${endpoint} endpoint`);
  }
  return creds;
}

/**
 * blockdev options with every `nbd` node's `tls-creds` resolved: the directory of the named
 * client credentials goes in `tls-creds-dir`, which the driver reads. Returns a copy.
 */
export function resolveTlsCreds(
  daemon: Daemon,
  options: Record<string, unknown>,
): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(options)) {
    out[k] = typeof v === "object" && v !== null && !Array.isArray(v)
      ? resolveTlsCreds(daemon, v as Record<string, unknown>)
      : v;
  }
  const id = out["tls-creds"];
  if (out.driver === "nbd" && typeof id === "string" && out["tls-creds-dir"] === undefined) {
    out["tls-creds-dir"] = findTlsCreds(daemon, id, "client").dir;
  }
  return out;
}

/** The object commands. */
export const objectCommands: readonly QmpCommand[] = [
  {
    name: "object-add",
    args: null,
    async run(args, { daemon }) {
      await objectAdd(daemon, args);
      return {};
    },
  },
  {
    name: "object-del",
    args: { id: "str" },
    run(args, { daemon }) {
      const id = args.id as string;
      // The server finds its authz object per client: deleting it refuses clients after.
      if (daemon.authz.delete(id)) return {};
      if (!daemon.tlsCreds.has(id)) throw genericError(`object '${id}' not found`);
      if (daemon.nbd?.tlsCredsId === id) {
        throw genericError(`object '${id}' is in use, can not be deleted`);
      }
      daemon.tlsCreds.delete(id);
      return {};
    },
  },
];
