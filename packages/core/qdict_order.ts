/**
 * The order in which QEMU's QDicts give their keys back: hash-bucket order (QEMU's `tdb_hash`
 * modulo 512), the latest insertion first within a bucket. Whatever QEMU prints from a QDict
 * (`qemu-img info --output=json`, a `json:` filename) comes out in this order.
 *
 * @module
 */

const BUCKETS = 512;
const encoder = new TextEncoder();

/** QEMU's `tdb_hash` of a QDict key. */
export function qdictHash(key: string): number {
  const bytes = encoder.encode(key);
  let value = Math.imul(0x238f13af, bytes.length) >>> 0;
  for (let i = 0; i < bytes.length; i++) {
    value = (value + ((bytes[i]! << ((i * 5) % 24)) >>> 0)) >>> 0;
  }
  return (Math.imul(1103515243, value) + 12345) >>> 0;
}

/**
 * `keys`, inserted into a QDict in the order given, in the order the QDict iterates them.
 *
 * @example
 * ```ts
 * import { qdictKeys } from "@blockgraph/core";
 * console.assert(qdictKeys(["driver", "offset"]).join() === "offset,driver");
 * ```
 */
export function qdictKeys(keys: readonly string[]): string[] {
  const indexed = keys.map((k, i) => ({ k, i, b: qdictHash(k) % BUCKETS }));
  indexed.sort((x, y) => x.b - y.b || y.i - x.i);
  return indexed.map((e) => e.k);
}
