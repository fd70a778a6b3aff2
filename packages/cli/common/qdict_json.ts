/**
 * JSON as QEMU's tools print it: objects are QDicts, whose keys come out in hash-bucket
 * order (core's `qdictKeys`), pretty printed with four-space indentation, strings quoted as
 * QEMU quotes them (`qemuJsonString`).
 *
 * @module
 */

import { qdictKeys, qemuJsonNumber, qemuJsonString } from "@blockgraph/core";

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
      `${inner}${qemuJsonString(k)}: ${pretty(v, indent + 4)}`
    );
    return items.length ? `{\n${items.join(",\n")}\n${pad}}` : `{\n${pad}}`;
  }
  if (typeof value === "string") return qemuJsonString(value);
  if (typeof value === "number") return qemuJsonNumber(value);
  return JSON.stringify(value);
}
