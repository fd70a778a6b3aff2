/**
 * The `qcow2` format driver: QEMU's copy-on-write image format, versions 2 and 3.
 *
 * @module
 */

import type { BlockDriver } from "@blockgraph/core";
import { createQcow2, QCOW2_CREATE_OPTIONS } from "./create.ts";
import { QCOW2_MAGIC } from "./format.ts";
import { openQcow2 } from "./open.ts";
import { QCOW2_RUNTIME_OPTIONS } from "./runtime_options.ts";

export { createParams, formatQcow2, type Qcow2CreateParams } from "./create.ts";
export { Qcow2Instance } from "./instance.ts";
export type { Qcow2CheckResult, Qcow2RepairMode } from "./check_result.ts";
export type { Qcow2Snapshot } from "./snapshot_table.ts";
export { QCOW2_AMEND_OPTIONS } from "./amend.ts";
export { ENCRYPTION_KEYS, type EncryptionRequest, encryptionRequest } from "./create_encryption.ts";
export type { AmendProgress } from "./amend.ts";

/**
 * The `qcow2` driver. Child `file` (required), `backing` (optional; without it, the
 * backing file the header names is opened with the format its header extension names) and
 * `data-file` (images with an external data file; without it, the file the header names,
 * relative to the image).
 * Runtime options are QEMU 7.2's (`BlockdevOptionsQcow2`, with its checks and messages; see
 * runtime_options.ts), and a reopen may change them: `cache-size`, `l2-cache-size` (default:
 * the whole image, up to 1 TiB), `l2-cache-entry-size` (the cache holds whole tables),
 * `refcount-cache-size` (default: the file, up to 1 TiB), `cache-clean-interval` (default 600
 * seconds), `lazy-refcounts`, `overlap-check` (a template name, or `overlap-check.template`
 * and one switch per structure) and `pass-discard-request|snapshot|other`. Ours:
 * `check-open: true` opens for `check`: a corrupt image opens read/write and a dirty one is
 * not repaired on open.
 *
 * @example
 * ```ts
 * import { DriverRegistry, Graph } from "@blockgraph/core";
 * import { formatQcow2, memoryDriver, qcow2Driver } from "@blockgraph/drivers";
 * const graph = new Graph({ registry: new DriverRegistry([memoryDriver, qcow2Driver]) });
 * const mem = await graph.open({ driver: "memory", "node-name": "mem" }, "doc");
 * await formatQcow2(mem, {
 *   size: 1 << 20, version: 3, clusterSize: 65536, refcountBits: 16, lazyRefcounts: false,
 * });
 * const disk = await graph.open({ driver: "qcow2", file: "mem" }, "doc");
 * await disk.write(1000, new Uint8Array([1, 2, 3]));
 * await disk.unref("doc");
 * await mem.unref("doc");
 * await graph.closeAll();
 * ```
 */
export const qcow2Driver: BlockDriver = {
  name: "qcow2",
  kind: "format",
  supportsBacking: true,
  childOptions: ["file", "data-file"],
  options: {
    ...QCOW2_RUNTIME_OPTIONS,
    "check-open": {
      type: "bool",
      description: "Open for check: allow a corrupt image read/write and do not repair a " +
        "dirty one on open",
    },
  },
  mutableOptions: Object.keys(QCOW2_RUNTIME_OPTIONS),
  createOptions: QCOW2_CREATE_OPTIONS,
  /** QEMU's score for the qcow2 magic with a version it knows. */
  probe(header: Uint8Array): number {
    if (header.length < 8) return 0;
    const view = new DataView(header.buffer, header.byteOffset, header.byteLength);
    const version = view.getUint32(4);
    return view.getUint32(0) === QCOW2_MAGIC && version >= 2 ? 100 : 0;
  },
  open: openQcow2,
  create: createQcow2,
};
