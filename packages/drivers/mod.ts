/**
 * The first drivers of blockgraph: the `null-co`, `memory`, `file` and `nbd` protocols and the
 * `raw` format, and {@link defaultRegistry} holding them all. The conformance suite every driver
 * runs is at `@blockgraph/drivers/conformance`.
 *
 * @module
 */

import { DriverRegistry } from "@blockgraph/core";
import { qcow2Driver } from "./formats/qcow2/mod.ts";
import { rawDriver } from "./formats/raw.ts";
import { fileDriver } from "./protocols/file.ts";
import { memoryDriver } from "./protocols/memory.ts";
import { nbdDriver } from "./protocols/nbd/driver.ts";
import { nullDriver } from "./protocols/null.ts";

export {
  createParams,
  ENCRYPTION_KEYS,
  type EncryptionRequest,
  encryptionRequest,
  formatQcow2,
  QCOW2_AMEND_OPTIONS,
  type Qcow2CheckResult,
  type Qcow2CreateParams,
  qcow2Driver,
  Qcow2Instance,
  type Qcow2RepairMode,
  type Qcow2Snapshot,
} from "./formats/qcow2/mod.ts";
export { rawDriver, RawInstance } from "./formats/raw.ts";
export {
  FILE_AIO_ENGINES,
  FILE_LOCKING_MODES,
  fileDriver,
  FileInstance,
  stripFilePrefix,
} from "./protocols/file.ts";
export { MEMORY_CHUNK_SIZE, memoryDriver, MemoryInstance } from "./protocols/memory.ts";
export { nullDriver, NullInstance } from "./protocols/null.ts";
export { nbdDriver, NbdInstance } from "./protocols/nbd/driver.ts";
export { parseNbdFilename } from "./protocols/nbd/filename.ts";
export { allocateIoMemory, type IoMemory } from "./io/io_memory.ts";
export { zeroTimeout } from "./io/loop_turn.ts";
export { secretBytes, secretPassword } from "./crypto/secret.ts";
export { luksPayloadOffset } from "./crypto/luks_header.ts";

/**
 * A new registry holding every driver of this package.
 *
 * @example
 * ```ts
 * import { defaultRegistry } from "@blockgraph/drivers";
 * console.assert(defaultRegistry().find("raw") !== undefined);
 * ```
 */
export function defaultRegistry(): DriverRegistry {
  return new DriverRegistry([
    nullDriver,
    memoryDriver,
    fileDriver,
    nbdDriver,
    rawDriver,
    qcow2Driver,
  ]);
}
