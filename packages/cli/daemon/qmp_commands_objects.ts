/**
 * User-creatable objects, as far as NBD and encrypted images need them: `secret` (`--object
 * secret,id=ID,data=...|file=...[,format=base64][,keyid=ID,iv=...]`), named by a qcow2 node's
 * `encrypt.key-secret`; QEMU's `tls-creds-x509` (`--object
 * tls-creds-x509,id=ID,endpoint=server|client,dir=DIR[,verify-peer=on|off]`, QMP `object-add`
 * and `object-del`), named by `tls-creds` on the NBD server and on `nbd` nodes, and
 * `authz-simple` (`--object authz-simple,id=ID,identity=DN`), named by the server's
 * `tls-authz`. They live in the graph's objects (`Graph.objects`), where the `nbd` driver
 * finds the credentials its `tls-creds` names. As in QEMU the server looks its authz object
 * up for each client, so one may be deleted (clients are then refused) or added after the
 * server started.
 *
 * @module
 */

import type { UserObject } from "@blockgraph/core";
import { secretBytes } from "@blockgraph/drivers";
import { findX509Creds, loadX509Creds, type X509Creds } from "@blockgraph/drivers/nbd";
import { secretFailure } from "../common/object_option.ts";
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

const SECRET_ARGS: ArgsSchema = {
  "qom-type": "str",
  id: "str",
  "*data": "str",
  "*file": "str",
  "*format": ["raw", "base64"],
  "*keyid": "str",
  "*iv": "str",
};

/**
 * A `secret` object, checked as QEMU completes one (`--object`'s checks and messages), then
 * its value decoded or decrypted, so a bad one fails here rather than at first use.
 */
async function addSecret(daemon: Daemon, a: Record<string, unknown>): Promise<void> {
  const objects = daemon.graph.objects;
  const failure = secretFailure(a, objects);
  if (failure !== null) throw genericError(failure);
  objects.add(a as UserObject);
  try {
    await secretBytes(objects, a.id as string);
  } catch (e) {
    objects.delete(a.id as string);
    throw genericError((e as Error).message);
  }
}

/**
 * object-add (and `--object`): `secret`, `tls-creds-x509` and `authz-simple` objects exist here. The
 * object is checked as QEMU creates it (x509 credentials' files are loaded) and goes into the
 * graph's objects.
 */
export async function objectAdd(
  daemon: Daemon,
  args: Record<string, unknown>,
  opts: CheckOptions = {},
): Promise<void> {
  const type = args["qom-type"];
  if (
    type !== undefined && type !== "tls-creds-x509" && type !== "authz-simple" &&
    type !== "secret"
  ) {
    throw genericError(
      `Invalid parameter '${
        String(type)
      }': only secret, tls-creds-x509 and authz-simple are supported`,
    );
  }
  const objects = daemon.graph.objects;
  const duplicate = (id: string) => {
    if (objects.has(id)) {
      throw genericError(`attempt to add duplicate property '${id}' to object (type 'container')`);
    }
  };
  if (type === "authz-simple") {
    const a = checkArgs(args, AUTHZ_ARGS, opts);
    duplicate(a.id as string);
    objects.add(a as UserObject);
    return;
  }
  if (type === "secret") {
    const a = checkArgs(args, SECRET_ARGS, opts);
    duplicate(a.id as string);
    return await addSecret(daemon, a);
  }
  const a = checkArgs(args, X509_ARGS, opts);
  const id = a.id as string;
  duplicate(id);
  const dir = a.dir as string | undefined;
  if (dir === undefined) throw genericError("Parameter 'dir' is missing");
  try {
    await loadX509Creds({
      id,
      endpoint: (a.endpoint as "client" | "server" | undefined) ?? "client",
      dir,
      verifyPeer: (a["verify-peer"] as boolean | undefined) ?? true,
    });
  } catch (e) {
    throw genericError((e as Error).message);
  }
  objects.add(a as UserObject);
}

/**
 * The server's `tls-authz` check for the object `id` (QEMU's `qauthz_is_allowed_by_id` with
 * authz-simple): throws QEMU's messages unless `dn` is the object's identity.
 */
export function checkTlsAuthz(daemon: Daemon, id: string, dn: string): void {
  const object = daemon.graph.objects.get(id);
  if (!object) throw genericError(`Cannot find QAuthZ object ID ${id}`);
  if (object["qom-type"] !== "authz-simple") {
    throw genericError(`Object '${id}' is not a QAuthZ subclass`);
  }
  if (object.identity !== dn) throw genericError(`TLS x509 authz check for ${dn} is denied`);
}

/**
 * The NBD server's credentials: the graph's object `id`, which must be x509 credentials for
 * a server endpoint, loaded (QEMU's messages: "No TLS credentials with id 'tls0'", "Expected
 * TLS credentials for a server endpoint").
 */
export async function serverTlsCreds(daemon: Daemon, id: string): Promise<X509Creds> {
  try {
    return await findX509Creds(daemon.graph, id, "server");
  } catch (e) {
    throw genericError((e as Error).message);
  }
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
      const objects = daemon.graph.objects;
      if (!objects.has(id)) throw genericError(`object '${id}' not found`);
      // nbd nodes keep the credentials they loaded (QEMU 7.2 deletes an object they use,
      // too); the server's are refused here, though QEMU 7.2 deletes those as well. The
      // server finds its authz object per client: deleting it refuses clients after.
      if (daemon.nbd?.tlsCredsId === id) {
        throw genericError(`object '${id}' is in use, can not be deleted`);
      }
      objects.delete(id);
      return {};
    },
  },
];
