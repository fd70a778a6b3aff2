/**
 * The checks every Backend request passes before it reaches the graph, with QEMU's errors:
 * ENOMEDIUM without a medium (or with the tray open), EIO for bad offsets, lengths and
 * ranges past the end, EPERM for writes the Backend took no permission for.
 *
 * @module
 */

import type { Backend } from "./backend.ts";
import { BlockError } from "./errors.ts";
import { isWritePerm } from "./permissions.ts";

/** Checks one request; returns the error to fail it with, or null. */
export function checkRequest(
  b: Backend,
  offset: number,
  bytes: number,
  op: string,
  kind: "read" | "write" | "flush",
): BlockError | null {
  if (!Number.isSafeInteger(bytes) || bytes < 0) {
    return new BlockError("EIO", `Invalid request length ${bytes}`, { op, offset });
  }
  const root = b.root;
  if (root === null || b.tray.isOpen) {
    return new BlockError("ENOMEDIUM", "No medium found", { node: b.name, op });
  }
  if (!Number.isSafeInteger(offset) || offset < 0) {
    return new BlockError("EIO", `Invalid request offset ${offset}`, { op, offset });
  }
  if (kind === "write" && !isWritePerm(root.perm)) {
    return new BlockError(
      "EPERM",
      `Block device '${b.describeName()}' did not take the 'write' permission`,
      { op, offset },
    );
  }
  if (kind !== "flush" && !(b.allowWriteBeyondEof && kind === "write")) {
    const len = root.node!.getLength();
    if (offset > len || len - offset < bytes) {
      return new BlockError(
        "EIO",
        `Request of ${bytes} bytes at offset ${offset} is beyond the end of the device (${len} bytes)`,
        { node: b.name, op, offset },
      );
    }
  }
  return null;
}
