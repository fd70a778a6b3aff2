/**
 * Driver options: schemas, validation with QEMU's messages, and the two spellings users type
 * (`key=value,file.filename=x` and nested JSON objects).
 *
 * @module
 */

import { BlockError } from "./errors.ts";

/** The type of one option. */
export type OptionType = "string" | "bool" | "int" | "size" | "enum";

/** One option a driver accepts. */
export interface OptionSpec {
  /** The value's type; strings from the command line are converted to it. */
  readonly type: OptionType;
  /** What the option does, for help text. */
  readonly description: string;
  /** For enums: the allowed values. */
  readonly values?: readonly string[];
  /** The value used when the option is absent. */
  readonly default?: string | number | boolean;
  /** Whether the option must be given. */
  readonly required?: boolean;
}

/** The options a driver accepts, by name. */
export type OptionSchema = Readonly<Record<string, OptionSpec>>;

/** Option values after validation: strings, numbers, booleans, or nested objects (children). */
export type OptionValues = Record<string, unknown>;

const SIZE_SUFFIX: Record<string, number> = {
  "": 1,
  b: 1,
  k: 2 ** 10,
  m: 2 ** 20,
  g: 2 ** 30,
  t: 2 ** 40,
  p: 2 ** 50,
  e: 2 ** 60,
};

/**
 * Parses a size with an optional binary suffix (`512`, `64k`, `1.5G`), as QEMU's
 * `qemu_strtosz` does. Returns `undefined` when the text is not a size.
 */
export function parseSize(text: string, defaultSuffix = ""): number | undefined {
  const m = /^\s*(\d+(?:\.\d+)?|0x[0-9a-fA-F]+)\s*([bBkKmMgGtTpPeE]?)\s*$/.exec(text);
  if (!m) return undefined;
  const num = m[1]!;
  const suffix = (m[2] || defaultSuffix).toLowerCase();
  const mult = SIZE_SUFFIX[suffix];
  if (mult === undefined) return undefined;
  if (num.startsWith("0x")) {
    if (m[2]) return undefined;
    const hex = Number.parseInt(num, 16);
    return Number.isSafeInteger(hex) ? hex : undefined;
  }
  // A fraction needs a unit it is a fraction of (QEMU refuses "1.5" but takes "1.5G").
  if (num.includes(".") && mult === 1) return undefined;
  const value = Math.floor(Number(num) * mult);
  return Number.isSafeInteger(value) ? value : undefined;
}

/** Parses an on/off style boolean; returns `undefined` for anything else. */
export function parseBool(value: unknown): boolean | undefined {
  if (typeof value === "boolean") return value;
  switch (value) {
    case "on":
    case "yes":
    case "true":
      return true;
    case "off":
    case "no":
    case "false":
      return false;
  }
  return undefined;
}

/**
 * Checks `raw` against `schema`, converts command-line strings to typed values, fills
 * defaults and refuses unknown options. `owner` names the driver in messages
 * (`Block format 'raw'`). Keys in `passThrough` are copied as they are.
 */
export function validateOptions(
  schema: OptionSchema,
  raw: OptionValues,
  owner: string,
  passThrough: readonly string[] = [],
  unknownMessage: (key: string) => string = (key) =>
    `${owner} does not support the option '${key}'`,
): OptionValues {
  const out: OptionValues = {};
  for (const [key, value] of expandDotted(schema, raw)) {
    if (passThrough.includes(key)) {
      out[key] = value;
      continue;
    }
    const spec = schema[key];
    if (!spec) {
      // QEMU checks what is left of the flattened options: a nested unknown is named by its
      // first leaf (`r.raw` of `{r: {raw: "on"}}`).
      const leaf = typeof value === "object" && value !== null && !Array.isArray(value)
        ? Object.keys(flatten(value as OptionValues, `${key}.`))[0]
        : undefined;
      throw new BlockError("EINVAL", unknownMessage(leaf ?? key));
    }
    out[key] = convert(key, spec, value);
  }
  for (const [key, spec] of Object.entries(schema)) {
    if (key in out) continue;
    if (spec.required) throw new BlockError("EINVAL", `Parameter '${key}' is missing`);
    if (spec.default !== undefined) out[key] = spec.default;
  }
  return out;
}

/**
 * The entries of `raw`, with nested objects spelled out as dotted keys when the schema
 * declares dotted options under them (`server: {type: "unix"}` for `server.type`), also
 * under an option that is itself a scalar in its other form (qcow2's `overlap-check`, a
 * template name or `{template, main-header, ...}`).
 */
function expandDotted(schema: OptionSchema, raw: OptionValues): [string, unknown][] {
  const out: [string, unknown][] = [];
  for (const [key, value] of Object.entries(raw)) {
    const nested = typeof value === "object" && value !== null && !Array.isArray(value) &&
      Object.keys(schema).some((k) => k.startsWith(`${key}.`));
    if (nested) out.push(...Object.entries(flatten(value as OptionValues, `${key}.`)));
    else out.push([key, value]);
  }
  return out;
}

function convert(key: string, spec: OptionSpec, value: unknown): string | number | boolean {
  switch (spec.type) {
    case "string":
      if (typeof value === "string") return value;
      if (typeof value === "number") return String(value);
      break;
    case "bool": {
      const b = parseBool(value);
      if (b !== undefined) return b;
      throw new BlockError(
        "EINVAL",
        `Parameter '${key}' expects 'on' or 'off'`,
      );
    }
    case "int":
      if (typeof value === "number" && Number.isSafeInteger(value)) return value;
      if (typeof value === "string" && /^-?\d+$/.test(value.trim())) {
        const n = Number(value);
        if (Number.isSafeInteger(n)) return n;
      }
      throw new BlockError("EINVAL", `Parameter '${key}' expects an integer`);
    case "size": {
      // QEMU's sizes are unsigned 64-bit: larger JavaScript integers lose precision.
      if (typeof value === "number" && Number.isInteger(value) && value >= 0 && value < 2 ** 64) {
        return value;
      }
      const n = typeof value === "string" ? parseSize(value) : undefined;
      if (n !== undefined) return n;
      throw new BlockError(
        "EINVAL",
        `Parameter '${key}' expects a non-negative number below 2^64`,
      );
    }
    case "enum":
      if (typeof value === "string" && spec.values?.includes(value)) return value;
      throw new BlockError(
        "EINVAL",
        `Parameter '${key}' does not accept value '${String(value)}'` +
          (spec.values ? ` (one of: ${spec.values.join(", ")})` : ""),
      );
  }
  throw new BlockError("EINVAL", `Invalid parameter type for '${key}', expected: ${spec.type}`);
}

/**
 * The items of QEMU's `key=value,key2=value2` syntax in order (`,,` is a literal comma in a
 * value); an item without `=` has a null value. What the items may be is the caller's rule.
 */
export function keyValueItems(text: string): { key: string; value: string | null }[] {
  const items: { key: string; value: string | null }[] = [];
  let i = 0;
  while (i < text.length) {
    let key = "";
    while (i < text.length && text[i] !== "=" && text[i] !== ",") key += text[i++];
    if (text[i] !== "=") {
      i++;
      items.push({ key, value: null });
      continue;
    }
    i++;
    let value = "";
    while (i < text.length) {
      if (text[i] === ",") {
        if (text[i + 1] !== ",") break;
        i++;
      }
      value += text[i++];
    }
    i++;
    items.push({ key, value });
  }
  return items;
}

/**
 * Splits QEMU's `key=value,key2=value2` syntax (`,,` is a literal comma) into a flat map.
 * A leading bare word is stored under `implied` when given (`-o` lists, `--blockdev`).
 */
export function parseKeyValue(text: string, implied?: string): Record<string, string> {
  const out: Record<string, string> = {};
  let first = true;
  for (const { key, value } of keyValueItems(text)) {
    if (value === null) {
      if (first && implied !== undefined && key !== "") {
        out[implied] = key;
        first = false;
        continue;
      }
      throw new BlockError("EINVAL", `Expected '=' after parameter '${key}'`);
    }
    if (key === "") throw new BlockError("EINVAL", "Invalid parameter ''");
    if (Object.hasOwn(out, key)) {
      throw new BlockError("EINVAL", `Parameter '${key}' is duplicated`);
    }
    out[key] = value;
    first = false;
  }
  return out;
}

/**
 * Turns dotted keys into nested objects: `{"file.filename": "x"}` becomes
 * `{file: {filename: "x"}}`. Objects whose keys are exactly 0..n-1 become arrays.
 */
export function unflatten(flat: Record<string, unknown>): OptionValues {
  const root: OptionValues = {};
  for (const [key, value] of Object.entries(flat)) {
    const parts = key.split(".");
    let cur = root;
    for (let i = 0; i < parts.length - 1; i++) {
      const p = parts[i]!;
      const next = cur[p];
      if (next === undefined) {
        const obj: OptionValues = {};
        cur[p] = obj;
        cur = obj;
      } else if (typeof next === "object" && next !== null) {
        cur = next as OptionValues;
      } else {
        throw new BlockError("EINVAL", `Parameter '${parts.slice(0, i + 1).join(".")}' conflicts`);
      }
    }
    const last = parts[parts.length - 1]!;
    if (typeof cur[last] === "object" && cur[last] !== null) {
      throw new BlockError("EINVAL", `Parameter '${key}' conflicts`);
    }
    cur[last] = value;
  }
  return arraysFromIndices(root) as OptionValues;
}

function arraysFromIndices(value: unknown): unknown {
  if (typeof value !== "object" || value === null || Array.isArray(value)) return value;
  const obj = value as OptionValues;
  const keys = Object.keys(obj);
  for (const k of keys) obj[k] = arraysFromIndices(obj[k]);
  if (keys.length > 0 && keys.every((k, i) => k === String(i))) return keys.map((k) => obj[k]);
  return obj;
}

/** The inverse of {@link unflatten}: nested objects become dotted keys. */
export function flatten(options: OptionValues, prefix = ""): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(options)) {
    const k = prefix + key;
    if (typeof value === "object" && value !== null) {
      Object.assign(out, flatten(value as OptionValues, k + "."));
    } else {
      out[k] = value;
    }
  }
  return out;
}
