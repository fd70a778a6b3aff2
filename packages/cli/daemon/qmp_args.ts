/**
 * Checking a command's arguments as QEMU's QAPI input visitor does: members in declaration
 * order, QEMU's messages ("Parameter 'node-name' is missing", "Invalid parameter type for
 * 'size', expected: integer", "Parameter 'x' is unexpected"), enums, nested objects, and the
 * command line's key=value form where every value is a string.
 *
 * @module
 */

import { genericError } from "./qmp_error.ts";

/**
 * A member type: scalars, an enum (its values), a list, a nested object, or anything. `int`
 * is QAPI's int64; `uint16`, `uint32` and `uint64` its unsigned integers.
 */
export type ArgType =
  | "str"
  | "int"
  | "uint16"
  | "uint32"
  | "uint64"
  | "bool"
  | "any"
  | "object"
  | readonly string[]
  | { readonly list: ArgType }
  | { readonly members: ArgsSchema }
  | { readonly check: (value: unknown, path: string, opts: CheckOptions) => unknown };

/** Members by name; a leading `*` marks an optional member (QAPI's spelling). */
export type ArgsSchema = Readonly<Record<string, ArgType>>;

/** How values are read. */
export interface CheckOptions {
  /** Prefix of member names in messages (`addr.`). */
  readonly prefix?: string;
  /** Values come from key=value text: scalars are strings to convert. */
  readonly keyval?: boolean;
}

const TYPE_NAMES: Record<string, string> = {
  str: "string",
  int: "integer",
  bool: "boolean",
  object: "object",
};

function isEnum(t: ArgType): t is readonly string[] {
  return Array.isArray(t);
}

function typeName(t: ArgType): string {
  if (typeof t === "string") return TYPE_NAMES[t] ?? t;
  if (isEnum(t)) return "string";
  return "list" in t ? "array" : "object";
}

/** Whether `v` is a JSON object (not null, not an array). */
export function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

const UINT_MAX: Record<string, number> = { uint16: 0xffff, uint32: 0xffffffff };

/**
 * The member's own name, as QEMU's visitors name it in some messages (enum values, unsigned
 * ranges) where others give the whole path: `type` for `addr.type`, `null` in a list.
 */
export function bareName(path: string): string {
  if (path.endsWith("]")) return "null";
  return path.slice(path.lastIndexOf(".") + 1);
}

/**
 * An unsigned integer as QEMU's input visitor reads it: any JSON integer within 64 bits
 * (a negative one wraps around, as QEMU takes it "for backward compatibility"), then the
 * type's range. Messages: `expects uint64` for anything else (keyval: `expects integer`),
 * `expects uint32_t` out of range, the latter with the member's own name.
 */
function checkUint(value: unknown, type: string, path: string, opts: CheckOptions): number {
  let n: number | undefined;
  if (opts.keyval && typeof value === "string") {
    if (!/^\s*-?[0-9]+$/.test(value)) throw genericError(`Parameter '${path}' expects integer`);
    n = Number(value);
  } else if (typeof value === "number" && Number.isInteger(value)) {
    n = value;
  }
  if (n === undefined || n >= 2 ** 64 || n < -(2 ** 63)) {
    throw genericError(`Parameter '${path}' expects uint64`);
  }
  if (n < 0) n += 2 ** 64;
  const max = UINT_MAX[type];
  if (max !== undefined && n > max) {
    throw genericError(`Parameter '${bareName(path)}' expects ${type}_t`);
  }
  return n;
}

function checkValue(value: unknown, type: ArgType, path: string, opts: CheckOptions): unknown {
  const wrong = () =>
    genericError(`Invalid parameter type for '${path}', expected: ${typeName(type)}`);
  if (type === "any") return value;
  if (isEnum(type)) {
    if (typeof value !== "string") throw wrong();
    if (!type.includes(value)) {
      throw genericError(`Parameter '${bareName(path)}' does not accept value '${value}'`);
    }
    return value;
  }
  if (typeof type === "object") {
    if ("check" in type) return type.check(value, path, opts);
    if ("list" in type) {
      if (!Array.isArray(value)) throw wrong();
      return value.map((v, i) => checkValue(v, type.list, `${path}[${i}]`, opts));
    }
    if (!isObject(value)) throw wrong();
    return checkArgs(value, (type as { members: ArgsSchema }).members, {
      ...opts,
      prefix: `${path}.`,
    });
  }
  switch (type) {
    case "str":
      if (typeof value !== "string") throw wrong();
      return value;
    case "object":
      if (!isObject(value)) throw wrong();
      return value;
    case "int":
      if (opts.keyval && typeof value === "string") {
        if (!/^-?[0-9]+$/.test(value.trim())) {
          throw genericError(`Parameter '${path}' expects integer`);
        }
        return Number(value);
      }
      // QEMU's int64: a JSON number out of its range is not an integer to it.
      if (typeof value !== "number" || !Number.isInteger(value)) throw wrong();
      if (value >= 2 ** 63 || value < -(2 ** 63)) throw wrong();
      return value;
    case "uint16":
    case "uint32":
    case "uint64":
      return checkUint(value, type, path, opts);
    case "bool":
      if (opts.keyval && typeof value === "string") {
        if (value === "on" || value === "yes" || value === "true") return true;
        if (value === "off" || value === "no" || value === "false") return false;
        throw genericError(`Parameter '${path}' expects 'on' or 'off'`);
      }
      if (typeof value !== "boolean") throw wrong();
      return value;
  }
  return value;
}

/**
 * Checks `args` against `schema`; returns the members with converted values. Throws a
 * `GenericError` with QEMU's message at the first problem.
 *
 * @example
 * ```ts
 * import { checkArgs } from "./qmp_args.ts";
 * const a = checkArgs({ id: "cd0" }, { id: "str", "*force": "bool" });
 * console.assert(a.id === "cd0" && a.force === undefined);
 * ```
 */
export function checkArgs(
  args: Record<string, unknown>,
  schema: ArgsSchema,
  opts: CheckOptions = {},
): Record<string, unknown> {
  const prefix = opts.prefix ?? "";
  const out: Record<string, unknown> = {};
  const known = new Set<string>();
  for (const [spec, type] of Object.entries(schema)) {
    const optional = spec.startsWith("*");
    const name = optional ? spec.slice(1) : spec;
    known.add(name);
    const value = args[name];
    if (value === undefined) {
      if (!optional) throw genericError(`Parameter '${prefix}${name}' is missing`);
      continue;
    }
    out[name] = checkValue(value, type, prefix + name, opts);
  }
  for (const key of Object.keys(args)) {
    if (!known.has(key)) throw genericError(`Parameter '${prefix}${key}' is unexpected`);
  }
  return out;
}
