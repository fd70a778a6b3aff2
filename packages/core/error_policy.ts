/**
 * Error policies (`rerror`/`werror`) and what they decide for one error.
 *
 * @module
 */

import type { Backend } from "./backend.ts";
import { type BlockError, strerror } from "./errors.ts";

/** A read or write error policy (`rerror`/`werror`). */
export type ErrorPolicy = "report" | "ignore" | "stop" | "enospc";
/** What was done about one error. */
export type ErrorAction = "report" | "ignore" | "stop";
/** The I/O status QMP reports. */
export type IoStatus = "ok" | "failed" | "nospace";

/** What `policy` does about `err`: `enospc` stops on ENOSPC and reports anything else. */
export function errorAction(policy: ErrorPolicy, err: BlockError): ErrorAction {
  switch (policy) {
    case "report":
      return "report";
    case "ignore":
      return "ignore";
    case "stop":
      return "stop";
    case "enospc":
      return err.code === "ENOSPC" ? "stop" : "report";
  }
}

/** The data of a `BLOCK_IO_ERROR` event, with QEMU's fields. */
export function ioErrorEventData(
  b: Backend,
  operation: string,
  action: ErrorAction,
  err: BlockError,
): Record<string, unknown> {
  const data: Record<string, unknown> = {
    device: b.name,
    "qom-path": b.deviceId,
    operation,
    action,
    reason: strerror(err.code),
  };
  if (b.node) data["node-name"] = b.node.name;
  if (err.code === "ENOSPC") data["nospace"] = true;
  return data;
}
