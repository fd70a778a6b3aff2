/**
 * NBD: the wire codec and socket I/O shared by the `nbd` protocol driver (the client, here)
 * and the NBD export (the server, in `@blockgraph/devices`).
 *
 * @module
 */

export * from "./constants.ts";
export * from "./codec.ts";
export { fromNbdErrno, NbdErrno, toNbdErrno } from "./errno.ts";
export {
  type ReadableConn,
  UnexpectedEof,
  WireReader,
  WireWriter,
  type WritableConn,
} from "./wire_io.ts";
export { type ConnSocket, ListenerSockets, shutdownSocket } from "../../io/socket_fd.ts";
export { cachestatAvailable, hostSendCounters } from "../../io/host_send.ts";
export { type ClientConn, NbdClient, type NbdClientOptions, type StatusExtent } from "./client.ts";
export { clientHandshake, type ExportInfo } from "./client_handshake.ts";
export { nbdDriver, NbdInstance } from "./driver.ts";
export { nbdFilename, parseNbdFilename } from "./filename.ts";
export {
  checkClientCertificate,
  distinguishedName,
  loadX509Creds,
  startTlsClient,
  startTlsServer,
  type TlsConn,
  type UpgradableConn,
  type X509Creds,
  type X509CredsOptions,
} from "./tls.ts";
export { findX509Creds } from "./tls_objects.ts";
