/**
 * The NBD export: {@link NbdServer} listens and serves {@link NbdExport}s, each a Backend
 * offered under a name to any NBD client (qemu-io, qemu-img, nbdinfo, the Linux kernel).
 *
 * @module
 */

export { NbdServer } from "./server.ts";
export type { NbdServerAddress, NbdServerOptions } from "./server.ts";
export { NbdExport } from "./export.ts";
export type {
  BlockExportAddArgs,
  BlockExportInfo,
  ExportClient,
  NbdExportOptions,
} from "./export.ts";
export { MAX_REQUESTS, ServerConnection } from "./connection.ts";
export type { ServerConn } from "./connection.ts";
export { serverHandshake } from "./handshake.ts";
export type { ExportLookup, Negotiated } from "./handshake.ts";
export {
  ALLOCATION_DEPTH_CONTEXT,
  ALLOCATION_DEPTH_ID,
  BASE_ALLOCATION_CONTEXT,
  BASE_ALLOCATION_ID,
  type ContextSource,
  DIRTY_BITMAP_FIRST_ID,
  exportContexts,
  META_DIRTY_BITMAP_PREFIX,
  selectContexts,
} from "./meta_context.ts";
export type { MetaContext } from "./meta_context.ts";
export {
  allocationFlags,
  bitmapExtents,
  collectExtents,
  STATE_DIRTY,
  statusAbove,
} from "./extents.ts";
export type { Extent } from "./extents.ts";
