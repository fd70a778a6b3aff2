/**
 * `@blockgraph/devices`: everything that consumes a Backend: the base every device model
 * builds on, and the NBD export (server and exports). The virtio-blk and IDE/ATAPI models
 * follow.
 *
 * @module
 */

export { BlockDevice } from "./block_device.ts";
export type { BlockDeviceOptions, PendingMediaEvents } from "./block_device.ts";
export { NbdExport, NbdServer } from "./nbd_export/mod.ts";
export type {
  BlockExportAddArgs,
  BlockExportInfo,
  ExportClient,
  ExportLookup,
  NbdExportOptions,
  NbdServerAddress,
  NbdServerOptions,
} from "./nbd_export/mod.ts";
