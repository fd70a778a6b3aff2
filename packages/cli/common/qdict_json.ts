/**
 * JSON as QEMU's tools print it: objects are QDicts, whose keys come out in hash-bucket
 * order (QEMU's `tdb_hash` modulo 512, the latest insertion first within a bucket), pretty
 * printed with four-space indentation.
 *
 * @module
 */

const BUCKETS = 512;

/** QEMU's `tdb_hash` of a QDict key. */
export function qdictHash(key: string): number {
  const bytes = new TextEncoder().encode(key);
  let value = Math.imul(0x238f13af, bytes.length) >>> 0;
  for (let i = 0; i < bytes.length; i++) {
    value = (value + ((bytes[i]! << ((i * 5) % 24)) >>> 0)) >>> 0;
  }
  return (Math.imul(1103515243, value) + 12345) >>> 0;
}

/** The keys of `obj` in the order a QDict built by inserting them in order iterates them. */
export function qdictKeys(keys: readonly string[]): string[] {
  const indexed = keys.map((k, i) => ({ k, i, b: qdictHash(k) % BUCKETS }));
  indexed.sort((x, y) => x.b - y.b || y.i - x.i);
  return indexed.map((e) => e.k);
}

function reorder(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(reorder);
  if (value !== null && typeof value === "object") {
    const obj = value as Record<string, unknown>;
    const out: Record<string, unknown> = {};
    for (const k of qdictKeys(Object.keys(obj))) out[k] = reorder(obj[k]);
    return out;
  }
  return value;
}

/**
 * `value` as QEMU's `qobject_to_json_pretty` prints it (objects in QDict order), with a
 * trailing newline.
 *
 * @example
 * ```ts
 * import { qdictJson } from "./qdict_json.ts";
 * console.assert(qdictJson({ a: 1 }) === '{\n    "a": 1\n}\n');
 * ```
 */
export function qdictJson(value: unknown): string {
  return pretty(reorder(value), 0) + "\n";
}

/** QEMU's pretty JSON: like JSON.stringify with 4 spaces, but empty lists and dicts still
 * break the line (`[\n    ]`), as QEMU's JSON writer does. */
function pretty(value: unknown, indent: number): string {
  const pad = " ".repeat(indent);
  const inner = " ".repeat(indent + 4);
  if (Array.isArray(value)) {
    const items = value.map((v) => inner + pretty(v, indent + 4));
    return items.length ? `[\n${items.join(",\n")}\n${pad}]` : `[\n${pad}]`;
  }
  if (value !== null && typeof value === "object") {
    const items = Object.entries(value).filter(([, v]) => v !== undefined).map(([k, v]) =>
      `${inner}${JSON.stringify(k)}: ${pretty(v, indent + 4)}`
    );
    return items.length ? `{\n${items.join(",\n")}\n${pad}}` : `{\n${pad}}`;
  }
  return JSON.stringify(value);
}
