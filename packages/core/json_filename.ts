/**
 * QEMU's `json:` pseudo-protocol: a filename `json:{...}` is the options of the node it opens,
 * children as nested objects (`json:{"driver": "raw", "file": {"driver": "file", "filename":
 * "a.img"}}`). It stands wherever a filename does: on the command line, as `-b`, as the
 * backing file name in an image header. Options given otherwise win over the ones in the
 * filename (QEMU's `parse_json_protocol`).
 *
 * @module
 */

import { BlockError } from "./errors.ts";
import type { OptionValues } from "./options.ts";
import { unflatten } from "./options.ts";
import { parseQemuJson } from "./qemu_json.ts";

/** The prefix of a `json:` filename. */
export const JSON_FILENAME_PREFIX = "json:";

/** Whether `filename` is a `json:` filename. */
export function isJsonFilename(filename: string): boolean {
  return filename.startsWith(JSON_FILENAME_PREFIX);
}

/**
 * QEMU's `qdict_flatten`: nested objects and lists become dotted keys (`file.filename`,
 * `server.0.host`); empty ones stay as they are. A dotted key and a nested member naming the
 * same option: the nested member wins.
 */
export function flattenOptions(options: OptionValues): OptionValues {
  const out: OptionValues = {};
  const nested: [string, OptionValues][] = [];
  for (const [key, value] of Object.entries(options)) {
    const members = typeof value === "object" && value !== null ? Object.entries(value) : [];
    if (members.length > 0) nested.push([key, value as OptionValues]);
    else out[key] = value;
  }
  for (const [key, value] of nested) {
    for (const [k, v] of Object.entries(flattenOptions(value))) out[`${key}.${k}`] = v;
  }
  return out;
}

/**
 * The options a `json:` filename holds, nested (`{"file.filename": "x"}` and `{"file":
 * {"filename": "x"}}` both give the latter). Throws QEMU's errors: "Could not parse the JSON
 * options: ..." for bad JSON and "Invalid JSON object given" for JSON that is not an object.
 *
 * @example
 * ```ts
 * import { parseJsonFilename } from "@blockgraph/core";
 * const o = parseJsonFilename('json:{"driver": "raw", "file.filename": "a.img"}');
 * console.assert((o.file as { filename: string }).filename === "a.img");
 * ```
 */
export function parseJsonFilename(filename: string): OptionValues {
  if (!isJsonFilename(filename)) {
    throw new BlockError("EINVAL", `'${filename}' is not a json: filename`);
  }
  let value: unknown;
  try {
    value = parseQemuJson(filename.slice(JSON_FILENAME_PREFIX.length));
  } catch (e) {
    throw new BlockError(
      "EINVAL",
      `Could not parse the JSON options: ${BlockError.from(e).message}`,
      { cause: e },
    );
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    throw new BlockError("EINVAL", "Invalid JSON object given");
  }
  return unflatten(flattenOptions(value as OptionValues));
}

/**
 * `explicit` options with those of the `json:` filename `filename` under them: a key the
 * filename gives is taken only where `explicit` has none (QEMU's `parse_json_protocol`, which
 * joins without overwriting). The result is nested.
 *
 * @example
 * ```ts
 * import { mergeJsonFilename } from "@blockgraph/core";
 * const o = mergeJsonFilename({ driver: "raw" }, 'json:{"driver": "qcow2", "file": {"filename": "a"}}');
 * console.assert(o.driver === "raw" && (o.file as { filename: string }).filename === "a");
 * ```
 */
export function mergeJsonFilename(explicit: OptionValues, filename: string): OptionValues {
  const out = flattenOptions(explicit);
  for (const [key, value] of Object.entries(flattenOptions(parseJsonFilename(filename)))) {
    if (!Object.hasOwn(out, key)) out[key] = value;
  }
  return unflatten(out);
}
