/**
 * The checks every request passes before the request layer touches a driver: the node is
 * open, offsets and lengths are sane, the I/O vector covers the range, the node is writable.
 * Each returns the error to reject with, or null.
 *
 * @module
 */

import { BlockError } from "./errors.ts";
import type { IoVector } from "./io_vector.ts";
import type { Node } from "./node.ts";

/** Largest byte offset a request may reach (QEMU's BDRV_MAX_LENGTH is about 2^63; JS: 2^53). */
export const MAX_LENGTH: number = Number.MAX_SAFE_INTEGER;

/** A rejection for a request on a closed node. */
export function closed(node: Node, op: string): Promise<never> {
  return Promise.reject(
    new BlockError("ENOMEDIUM", `Node '${node.name}' is closed`, { node: node.name, op }),
  );
}

/** Validates offset and length; returns an error for the caller to reject with, or null. */
export function checkRange(
  node: Node,
  offset: number,
  bytes: number,
  op: string,
): BlockError | null {
  if (
    !Number.isSafeInteger(offset) || !Number.isSafeInteger(bytes) || offset < 0 || bytes < 0 ||
    offset > MAX_LENGTH - bytes
  ) {
    return new BlockError(
      "EIO",
      `Invalid request on node '${node.name}': offset ${offset}, ${bytes} bytes`,
      { node: node.name, op, offset },
    );
  }
  return null;
}

/** Checks that `[qiovOffset, qiovOffset+bytes)` lies inside `qiov` (QEMU's qiov request check). */
export function checkVector(
  node: Node,
  qiov: IoVector,
  qiovOffset: number,
  bytes: number,
  op: string,
  offset: number,
): BlockError | null {
  if (!Number.isSafeInteger(qiovOffset) || qiovOffset < 0 || qiovOffset > qiov.size - bytes) {
    return new BlockError(
      "EINVAL",
      `Invalid I/O vector for ${op} on node '${node.name}': ${bytes} bytes at vector offset ` +
        `${qiovOffset}, vector of ${qiov.size} bytes`,
      { node: node.name, op, offset },
    );
  }
  return null;
}

/** Calls a failure callback that rethrows, returning its error as a rejected promise. */
export function rejectWith(fail: (e: unknown) => never, e: unknown): Promise<never> {
  try {
    fail(e);
  } catch (err) {
    return Promise.reject(err);
  }
}

/** Refuses writes to a read-only node (EPERM, naming the node). */
export function checkWritable(node: Node, offset: number): BlockError | null {
  if (node.flags.readOnly) {
    return new BlockError("EPERM", `Block node '${node.name}' is read-only`, {
      node: node.name,
      op: "write",
      offset,
    });
  }
  return null;
}
