/**
 * TLS credentials named by id: the `tls-creds-x509` object a graph's user-creatable objects
 * hold (`--object tls-creds-x509,id=tls0,endpoint=client,dir=DIR`, QMP `object-add`), found
 * and loaded as QEMU's NBD code finds its `tls-creds` (`nbd_get_tls_creds` in `block/nbd.c`
 * and `blockdev-nbd.c`), with QEMU 7.2's messages, in its order:
 *
 * 1. no object with that id: "No TLS credentials with id 'ID'";
 * 2. an object of a type that is not TLS credentials: "Object with id 'ID' is not TLS
 *    credentials";
 * 3. credentials for the other end: "Expected TLS credentials for a client endpoint" (the
 *    endpoint defaults to `client`, as QEMU's);
 * 4. TLS credentials of a type other than x509 (`tls-creds-anon`, `tls-creds-psk`,
 *    `tls-cipher-suites`), which QEMU would try at the handshake and we cannot: "Unsupported
 *    TLS credentials type TYPE", the message QEMU gives a type its TLS session cannot use.
 *
 * The PEM files are read from the object's `dir` when the lookup is made (QEMU reads them when
 * the object is created; whoever creates one checks that they are there), and its
 * `verify-peer` (default on) is honoured.
 *
 * @module
 */

import { BlockError, type Graph, parseBool } from "@blockgraph/core";
import { loadX509Creds, type X509Creds } from "./tls.ts";

/** QOM types that are TLS credentials (subclasses of QEMU's `tls-creds`). */
const TLS_CREDS_TYPES = new Set([
  "tls-creds-x509",
  "tls-creds-anon",
  "tls-creds-psk",
  "tls-cipher-suites",
]);

/**
 * The x509 credentials the graph's object `id` defines, for `endpoint`, loaded from their
 * directory. Fails (EINVAL, ENOTSUP for a type we cannot use) with QEMU's messages.
 *
 * @example
 * ```ts
 * import { Graph } from "@blockgraph/core";
 * import { defaultRegistry } from "@blockgraph/drivers";
 * import { findX509Creds } from "@blockgraph/drivers/nbd";
 * const graph = new Graph({ registry: defaultRegistry() });
 * graph.objects.add({ "qom-type": "tls-creds-x509", id: "tls0", endpoint: "server", dir: "/pki" });
 * try {
 *   await findX509Creds(graph, "tls0", "client");
 * } catch (e) {
 *   console.assert((e as Error).message === "Expected TLS credentials for a client endpoint");
 * }
 * ```
 */
export async function findX509Creds(
  graph: Graph,
  id: string,
  endpoint: "server" | "client",
): Promise<X509Creds> {
  const object = graph.objects.get(id);
  if (!object) throw new BlockError("EINVAL", `No TLS credentials with id '${id}'`);
  const type = object["qom-type"];
  if (!TLS_CREDS_TYPES.has(type)) {
    throw new BlockError("EINVAL", `Object with id '${id}' is not TLS credentials`);
  }
  if ((object.endpoint ?? "client") !== endpoint) {
    throw new BlockError("EINVAL", `Expected TLS credentials for a ${endpoint} endpoint`);
  }
  if (type !== "tls-creds-x509") {
    throw new BlockError("ENOTSUP", `Unsupported TLS credentials type ${type}`);
  }
  const dir = object.dir;
  if (typeof dir !== "string") throw new BlockError("EINVAL", "Missing 'dir' property value");
  const verifyPeer = object["verify-peer"] === undefined ? true : parseBool(object["verify-peer"]);
  if (verifyPeer === undefined) {
    throw new BlockError("EINVAL", "Parameter 'verify-peer' expects 'on' or 'off'");
  }
  return await loadX509Creds({ id, endpoint, dir, verifyPeer });
}
