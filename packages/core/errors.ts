/**
 * The one error type of the block stack.
 *
 * Every failure that crosses a module boundary is a {@link BlockError} with an errno-style
 * `code` that callers branch on, a message a person can act on, and, where known, the node,
 * operation and byte offset it concerns.
 *
 * @module
 */

/** The errno-style codes the stack uses, with their Linux errno numbers. */
export const ERRNO = {
  EPERM: 1,
  ENOENT: 2,
  EIO: 5,
  ENXIO: 6,
  E2BIG: 7,
  EBADF: 9,
  EAGAIN: 11,
  ENOMEM: 12,
  EACCES: 13,
  EFAULT: 14,
  EBUSY: 16,
  EEXIST: 17,
  ENODEV: 19,
  ENOTDIR: 20,
  EISDIR: 21,
  EINVAL: 22,
  EMFILE: 24,
  ENOTTY: 25,
  EFBIG: 27,
  ENOSPC: 28,
  ESPIPE: 29,
  EROFS: 30,
  EPIPE: 32,
  ERANGE: 34,
  EDEADLK: 35,
  ENOSYS: 38,
  ELOOP: 40,
  ENODATA: 61,
  EOVERFLOW: 75,
  EBADMSG: 74,
  ENOTSUP: 95,
  ECONNRESET: 104,
  ESHUTDOWN: 108,
  ETIMEDOUT: 110,
  ECONNREFUSED: 111,
  EINPROGRESS: 115,
  ENOMEDIUM: 123,
  ECANCELED: 125,
} as const;

/** An errno-style error code. */
export type ErrorCode = keyof typeof ERRNO;

const MESSAGES: Record<ErrorCode, string> = {
  EPERM: "Operation not permitted",
  ENOENT: "No such file or directory",
  EIO: "Input/output error",
  ENXIO: "No such device or address",
  E2BIG: "Argument list too long",
  EBADF: "Bad file descriptor",
  EAGAIN: "Resource temporarily unavailable",
  ENOMEM: "Cannot allocate memory",
  EACCES: "Permission denied",
  EFAULT: "Bad address",
  EBUSY: "Device or resource busy",
  EEXIST: "File exists",
  ENODEV: "No such device",
  ENOTDIR: "Not a directory",
  EISDIR: "Is a directory",
  EINVAL: "Invalid argument",
  EMFILE: "Too many open files",
  ENOTTY: "Inappropriate ioctl for device",
  EFBIG: "File too large",
  ENOSPC: "No space left on device",
  ESPIPE: "Illegal seek",
  EROFS: "Read-only file system",
  EPIPE: "Broken pipe",
  ERANGE: "Numerical result out of range",
  EDEADLK: "Resource deadlock avoided",
  ENOSYS: "Function not implemented",
  ELOOP: "Too many levels of symbolic links",
  ENODATA: "No data available",
  EOVERFLOW: "Value too large for defined data type",
  EBADMSG: "Bad message",
  ENOTSUP: "Operation not supported",
  ECONNRESET: "Connection reset by peer",
  ESHUTDOWN: "Cannot send after transport endpoint shutdown",
  ETIMEDOUT: "Connection timed out",
  ECONNREFUSED: "Connection refused",
  EINPROGRESS: "Operation now in progress",
  ENOMEDIUM: "No medium found",
  ECANCELED: "Operation canceled",
};

const BY_NUMBER = new Map<number, ErrorCode>(
  (Object.entries(ERRNO) as [ErrorCode, number][]).map(([code, n]) => [n, code]),
);

/** Returns the C library's text for an errno code, as `strerror(3)` prints it on Linux. */
export function strerror(code: ErrorCode): string {
  return MESSAGES[code];
}

/** Maps a positive errno number to its code; unknown numbers map to `EIO`. */
export function errnoCode(errno: number): ErrorCode {
  return BY_NUMBER.get(Math.abs(errno)) ?? "EIO";
}

/** Where an error happened, for messages and for events. */
export interface ErrorContext {
  /** The node (or Backend) name the error concerns. */
  node?: string;
  /** The operation: `read`, `write`, `flush`, `open`, ... */
  op?: string;
  /** The byte offset of the failing request. */
  offset?: number;
  /** The underlying error, when this one wraps another. */
  cause?: unknown;
  /**
   * Advice printed after the message by the command-line tools (QEMU's error hint, such as
   * "Try block-dirty-bitmap-remove to delete this bitmap from disk"); QMP leaves it out.
   */
  hint?: string;
}

/**
 * The error type of the whole stack. `code` is the closed set callers branch on; the message
 * says what was wrong and where.
 *
 * @example
 * ```ts
 * import { BlockError } from "@blockgraph/core";
 * const e = new BlockError("ENOMEDIUM", "No medium found");
 * console.assert(e.errno === 123);
 * ```
 */
export class BlockError extends Error {
  /** The errno-style code. */
  readonly code: ErrorCode;
  /** The node (or Backend) name the error concerns, if known. */
  readonly node: string | undefined;
  /** The operation that failed, if known. */
  readonly op: string | undefined;
  /** The byte offset of the failing request, if known. */
  readonly offset: number | undefined;
  /** Advice for a person, printed on its own line(s) by the tools; not part of QMP replies. */
  readonly hint: string | undefined;

  /** Creates an error; `message` defaults to the code's `strerror` text. */
  constructor(code: ErrorCode, message?: string, context: ErrorContext = {}) {
    super(
      message ?? MESSAGES[code],
      context.cause === undefined ? undefined : { cause: context.cause },
    );
    this.name = "BlockError";
    this.code = code;
    this.node = context.node;
    this.op = context.op;
    this.offset = context.offset;
    this.hint = context.hint;
  }

  /** The positive Linux errno number for `code`. */
  get errno(): number {
    return ERRNO[this.code];
  }

  /** Builds an error from a (positive or negative) errno number. */
  static fromErrno(errno: number, message?: string, context: ErrorContext = {}): BlockError {
    return new BlockError(errnoCode(errno), message, context);
  }

  /**
   * Turns anything thrown into a BlockError: BlockErrors pass through, Deno's and Node's
   * system errors keep their errno code, and everything else becomes EIO.
   */
  static from(err: unknown, context: ErrorContext = {}): BlockError {
    if (err instanceof BlockError) return err;
    const code = systemErrorCode(err);
    const text = err instanceof Error ? err.message : String(err);
    return new BlockError(code, text, { ...context, cause: err });
  }
}

function systemErrorCode(err: unknown): ErrorCode {
  if (typeof err !== "object" || err === null) return "EIO";
  const code = (err as { code?: unknown }).code;
  if (typeof code === "string" && code in ERRNO) return code as ErrorCode;
  if (err instanceof Deno.errors.NotFound) return "ENOENT";
  if (err instanceof Deno.errors.PermissionDenied) return "EACCES";
  if (err instanceof Deno.errors.AlreadyExists) return "EEXIST";
  if (err instanceof Deno.errors.InvalidData) return "EINVAL";
  if (err instanceof Deno.errors.Busy) return "EBUSY";
  if (err instanceof Deno.errors.IsADirectory) return "EISDIR";
  if (err instanceof Deno.errors.NotADirectory) return "ENOTDIR";
  const errno = (err as { errno?: unknown }).errno;
  if (typeof errno === "number") return errnoCode(errno);
  return "EIO";
}
