/**
 * The few assertions the conformance suite and the driver tests need, with messages that say
 * where two byte ranges first differ.
 *
 * @module
 */

import { BlockError, type ErrorCode } from "@blockgraph/core";

/** An assertion that did not hold. */
export class AssertionError extends Error {
  /** Creates the error with `message`. */
  constructor(message: string) {
    super(message);
    this.name = "AssertionError";
  }
}

/** Throws when `condition` is false. */
export function assert(condition: unknown, message: string): asserts condition {
  if (!condition) throw new AssertionError(message);
}

/** Throws when `actual` and `expected` differ (`Object.is`). */
export function assertEquals<T>(actual: T, expected: T, what = "value"): void {
  if (!Object.is(actual, expected)) {
    throw new AssertionError(`${what}: expected ${String(expected)}, got ${String(actual)}`);
  }
}

/**
 * Throws when two byte arrays differ, naming the first differing index (shifted by `base`,
 * so messages can speak in disk offsets) and the lengths.
 */
export function assertBytesEqual(
  actual: Uint8Array,
  expected: Uint8Array,
  what = "bytes",
  base = 0,
): void {
  if (actual.length !== expected.length) {
    throw new AssertionError(
      `${what}: expected ${expected.length} bytes, got ${actual.length}`,
    );
  }
  for (let i = 0; i < actual.length; i++) {
    if (actual[i] !== expected[i]) {
      throw new AssertionError(
        `${what}: first difference at offset ${base + i}: expected ${expected[i]}, got ${
          actual[i]
        }`,
      );
    }
  }
}

/**
 * Awaits `promise` and throws unless it rejects with a {@link BlockError} whose code is
 * `code`. Returns the error for further checks.
 */
export async function assertRejectsWith(
  promise: Promise<unknown>,
  code: ErrorCode,
  what: string,
): Promise<BlockError> {
  let error: unknown;
  try {
    await promise;
  } catch (e) {
    error = e;
  }
  if (error === undefined) throw new AssertionError(`${what}: expected ${code}, it succeeded`);
  if (!(error instanceof BlockError)) {
    throw new AssertionError(`${what}: expected a BlockError ${code}, got ${String(error)}`);
  }
  if (error.code !== code) {
    throw new AssertionError(`${what}: expected ${code}, got ${error.code} (${error.message})`);
  }
  return error;
}
