/**
 * Error policies (`rerror`/`werror`) and what they decide for one error.
 *
 * @module
 */

import type { BlockError } from "./errors.ts";

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
