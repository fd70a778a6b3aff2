/**
 * `@blockgraph/devices`: everything that consumes a Backend. For now the base every device
 * model builds on; the virtio-blk, IDE/ATAPI models and the NBD export follow.
 *
 * @module
 */

export { BlockDevice } from "./block_device.ts";
export type { BlockDeviceOptions, PendingMediaEvents } from "./block_device.ts";
