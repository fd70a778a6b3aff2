/**
 * The protocol's error values and the stack's errno codes, both ways. NBD defines few errors
 * (EPERM, EIO, ENOMEM, EINVAL, ENOSPC, EOVERFLOW, ENOTSUP, ESHUTDOWN); a server maps what it
 * has onto them and a client maps them back.
 *
 * @module
 */

import type { ErrorCode } from "@blockgraph/core";

/** The error values NBD defines, by name. */
export const NbdErrno = {
  EPERM: 1,
  EIO: 5,
  ENOMEM: 12,
  EINVAL: 22,
  ENOSPC: 28,
  EOVERFLOW: 75,
  ENOTSUP: 95,
  ESHUTDOWN: 108,
} as const;

/**
 * The NBD error value for a stack error code, as a server sends it: read-only refusals are
 * EPERM, full disks ENOSPC, invalid arguments and ranges EINVAL, everything else that failed
 * on the way to storage EIO.
 */
export function toNbdErrno(code: ErrorCode): number {
  switch (code) {
    case "EPERM":
    case "EROFS":
    case "EACCES":
      return NbdErrno.EPERM;
    case "ENOMEM":
      return NbdErrno.ENOMEM;
    case "ENOSPC":
    case "EFBIG":
      return NbdErrno.ENOSPC;
    case "EOVERFLOW":
      return NbdErrno.EOVERFLOW;
    case "ENOTSUP":
    case "ENOSYS":
      return NbdErrno.ENOTSUP;
    case "ESHUTDOWN":
      return NbdErrno.ESHUTDOWN;
    case "EINVAL":
    case "ERANGE":
    case "E2BIG":
      return NbdErrno.EINVAL;
    default:
      return NbdErrno.EIO;
  }
}

/** The stack error code for an NBD error value, as a client reads it; unknown values are EINVAL. */
export function fromNbdErrno(errno: number): ErrorCode {
  switch (errno) {
    case NbdErrno.EPERM:
      return "EPERM";
    case NbdErrno.EIO:
      return "EIO";
    case NbdErrno.ENOMEM:
      return "ENOMEM";
    case NbdErrno.ENOSPC:
      return "ENOSPC";
    case NbdErrno.EOVERFLOW:
      return "EOVERFLOW";
    case NbdErrno.ENOTSUP:
      return "ENOTSUP";
    case NbdErrno.ESHUTDOWN:
      return "ESHUTDOWN";
    default:
      return "EINVAL";
  }
}
