/**
 * `@blockgraph/core`: the block graph. Nodes (format, protocol and filter instances) joined
 * by typed child edges; Backends, the device-facing handles with media, tray and error
 * policy; reference counting with a private delete; permissions; drained sections; graph
 * changes as transactions; `closeAll`; events; dirty bitmaps; user-creatable objects; node
 * filenames (plain or `json:`) and QEMU's JSON.
 *
 * @module
 */

export { Backend } from "./backend.ts";
export { HBitmap } from "./bitmap.ts";
export type { BitmapArea } from "./bitmap.ts";
export {
  BitmapCheck,
  createDirtyBitmap,
  defaultBitmapGranularity,
  DirtyBitmap,
  findDirtyBitmap,
  MAX_BITMAP_NAME,
} from "./dirty_bitmap.ts";
export type { DirtyBitmapInfo, DirtyBitmapStore } from "./dirty_bitmap.ts";
export { DirtyBitmaps } from "./dirty_bitmaps.ts";
export type { BitmapAddArgs, BitmapMergeArgs, BitmapRef, BitmapSource } from "./dirty_bitmaps.ts";
export type { BackendOptions } from "./backend.ts";
export type { DeviceOps, RootListener } from "./device_ops.ts";
export { errorAction } from "./error_policy.ts";
export type { ErrorAction, ErrorPolicy, IoStatus } from "./error_policy.ts";
export { Child, ChildRole, roleNames } from "./child.ts";
export type { ChildParent, ParentKind } from "./child.ts";
export {
  BlockStatusFlags,
  createWarning,
  DEFAULT_LIMITS,
  DriverRegistry,
  HOST_READ_DECLINED,
  ReqFlags,
} from "./driver.ts";
export type {
  BlockDriver,
  BlockLimits,
  BlockStatus,
  CreateContext,
  DriverInstance,
  DriverKind,
  FormatSpecificInfo,
  HostReadSink,
  OpenContext,
  PreallocMode,
  ReopenHandle,
} from "./driver.ts";
export { BlockError, ERRNO, errnoCode, strerror } from "./errors.ts";
export type { ErrorCode, ErrorContext } from "./errors.ts";
export { EventBus } from "./events.ts";
export type { BlockEvent, EventListener } from "./events.ts";
export { Graph, isWellFormedName } from "./graph.ts";
export type { GraphJob, GraphOptions } from "./graph.ts";
export { IoVector, isZeroBuffer, nativeCompareReady, sameBytes, sameBytesAt } from "./io_vector.ts";
export { DEFAULT_FLAGS, Node } from "./node.ts";
export type { NodeFlags } from "./node.ts";
export {
  flatten,
  keyValueItems,
  parseBool,
  parseKeyValue,
  parseSize,
  unflatten,
  validateOptions,
} from "./options.ts";
export type { OptionSchema, OptionSpec, OptionType, OptionValues } from "./options.ts";
export { defaultChildPerm, Perm, PERM_PASSTHROUGH, permNames } from "./permissions.ts";
export { qdictHash, qdictKeys } from "./qdict_order.ts";
export {
  JsonStreamer,
  parseQemuJson,
  qemuJson,
  qemuJsonNumber,
  qemuJsonString,
} from "./qemu_json.ts";
export type { JsonValue } from "./qemu_json.ts";
export {
  flattenOptions,
  isJsonFilename,
  JSON_FILENAME_PREFIX,
  mergeJsonFilename,
  parseJsonFilename,
} from "./json_filename.ts";
export {
  fullBackingFilename,
  nodeDirname,
  pathCombine,
  pathHasProtocol,
  refreshFilename,
} from "./refresh_filename.ts";
export type { RefreshFilenameOptions } from "./refresh_filename.ts";
export {
  blockStatusAbove,
  blockStatusAboveNow,
  type ChainStatus,
  isAllocatedAbove,
  isZeroAbove,
  statusBelow,
} from "./block_status_above.ts";
export { backendLoadVmState, backendSaveVmState, loadVmState, saveVmState } from "./vm_state.ts";
export { findJob, Job, queryJobs } from "./job.ts";
export { JobState } from "./job_state.ts";
export type { JobInfo, JobOptions } from "./job_state.ts";
export {
  canTransition,
  isCompletedStatus,
  isReadyStatus,
  JOB_STATUSES,
  JOB_VERBS,
  verbAllowed,
} from "./job_status.ts";
export type { JobStatus, JobVerb } from "./job_status.ts";
export { JobTxn } from "./job_txn.ts";
export type { TxnMember } from "./job_txn.ts";
export { JobCoroutine } from "./job_coroutine.ts";
export { JOB_SLICE_NS, RateLimit } from "./job_ratelimit.ts";
export type { NsClock } from "./job_ratelimit.ts";
export { BlockJob, defaultBlockJobId, queryBlockJobs } from "./block_job.ts";
export type { BlockJobInfo, BlockJobOptions } from "./block_job.ts";
export { TrackedRequest, TrackedRequests } from "./tracked_requests.ts";
export { Transaction } from "./transaction.ts";
export { Tray } from "./tray.ts";
export { UserObjects } from "./user_objects.ts";
export type { UserObject } from "./user_objects.ts";
export type { TrayHost } from "./tray.ts";
export type { TransactionAction } from "./transaction.ts";
