/**
 * JSON as QEMU's monitor writes it (`{"return": {}, "id": 1}`): members in the order given,
 * strings quoted as QEMU quotes them. Reading is core's `JsonStreamer`.
 *
 * @module
 */

import { qemuJsonNumber, qemuJsonString } from "@blockgraph/core";

/**
 * Formats `value` as QEMU prints QMP output: `{"key": value, "list": [1, 2]}` on one line.
 *
 * @example
 * ```ts
 * import { formatQmpJson } from "./qmp_json.ts";
 * console.assert(formatQmpJson({ return: {}, id: 1 }) === '{"return": {}, "id": 1}');
 * ```
 */
export function formatQmpJson(value: unknown): string {
  if (value === null || value === undefined) return "null";
  if (Array.isArray(value)) return `[${value.map(formatQmpJson).join(", ")}]`;
  if (typeof value === "object") {
    const toJSON = (value as { toJSON?: () => unknown }).toJSON;
    if (typeof toJSON === "function") return formatQmpJson(toJSON.call(value));
    const parts: string[] = [];
    for (const [k, v] of Object.entries(value)) {
      if (v !== undefined) parts.push(`${qemuJsonString(k)}: ${formatQmpJson(v)}`);
    }
    return `{${parts.join(", ")}}`;
  }
  if (typeof value === "number") return Number.isFinite(value) ? qemuJsonNumber(value) : "null";
  if (typeof value === "string") return qemuJsonString(value);
  return JSON.stringify(value);
}
