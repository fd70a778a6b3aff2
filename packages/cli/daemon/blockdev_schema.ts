/**
 * QEMU 7.2's QAPI schema of `BlockdevOptions` for the drivers blockgraph has, checked before
 * a QMP `blockdev-add` or `blockdev-reopen` opens anything, so that missing, unexpected and
 * wrongly typed members get QEMU's messages in QEMU's order ("Parameter 'file.filename' is
 * missing", "Parameter 'bogus' is unexpected", "Invalid parameter type for 'filename',
 * expected: string"). Members QEMU knows that a driver here does not take pass this check and
 * are refused when the node opens; options of ours that QEMU lacks pass too.
 *
 * @module
 */

import type { DriverRegistry, OptionSpec } from "@blockgraph/core";
import {
  type ArgsSchema,
  type ArgType,
  bareName,
  checkArgs,
  type CheckOptions,
  isObject,
} from "./qmp_args.ts";
import { genericError } from "./qmp_error.ts";

const ON_OFF_AUTO = ["on", "off", "auto"];

/** The members every driver shares (BlockdevOptionsBase after `driver`). */
const BASE: ArgsSchema = {
  "*node-name": "str",
  "*discard": ["ignore", "unmap"],
  "*cache": { members: { "*direct": "bool", "*no-flush": "bool" } },
  "*read-only": "bool",
  "*auto-read-only": "bool",
  "*force-share": "bool",
  "*detect-zeroes": ["off", "on", "unmap"],
};

/** A child: a node name or the options of a node to open (QEMU's BlockdevRef). */
function ref(registry: DriverRegistry, nullable: boolean): ArgType {
  return {
    check(value, path, opts) {
      if (typeof value === "string" || (nullable && value === null)) return value;
      if (isObject(value)) {
        return checkBlockdevOptions(registry, value, { ...opts, prefix: `${path}.` });
      }
      throw genericError(
        `Invalid parameter type for '${bareName(path)}', expected: ${
          nullable ? "BlockdevRefOrNull" : "BlockdevRef"
        }`,
      );
    },
  };
}

const OVERLAP_MODES = ["none", "constant", "cached", "all"];

/** Qcow2OverlapCheckFlags: a template and a switch per structure. */
const OVERLAP_FLAGS: ArgsSchema = {
  "*template": OVERLAP_MODES,
  "*main-header": "bool",
  "*active-l1": "bool",
  "*active-l2": "bool",
  "*refcount-table": "bool",
  "*refcount-block": "bool",
  "*snapshot-table": "bool",
  "*inactive-l1": "bool",
  "*inactive-l2": "bool",
  "*bitmap-directory": "bool",
};

/**
 * qcow2's `overlap-check`, QAPI's alternate Qcow2OverlapChecks: a template name
 * (Qcow2OverlapCheckMode) or an object of flags (Qcow2OverlapCheckFlags).
 */
const OVERLAP_CHECKS: ArgType = {
  check(value, path, opts) {
    if (typeof value === "string") {
      if (!OVERLAP_MODES.includes(value)) {
        throw genericError(`Parameter '${path}' does not accept value '${value}'`);
      }
      return value;
    }
    if (isObject(value)) {
      return checkArgs(value, OVERLAP_FLAGS, {
        ...opts,
        prefix: `${path}.`,
      });
    }
    throw genericError(`Invalid parameter type for '${path}', expected: Qcow2OverlapChecks`);
  },
};

/** Each driver's own members, in QEMU 7.2's order. */
function branch(registry: DriverRegistry, driver: string): ArgsSchema | null {
  switch (driver) {
    case "file":
      return {
        filename: "str",
        "*pr-manager": "str",
        "*locking": ON_OFF_AUTO,
        "*aio": ["threads", "native", "io_uring"],
        "*aio-max-batch": "int",
        "*drop-cache": "bool",
        "*x-check-cache-dropped": "bool",
      };
    case "null-co":
    case "null-aio":
      return { "*size": "int", "*latency-ns": "uint64", "*read-zeroes": "bool" };
    case "raw":
      return { file: ref(registry, false), "*offset": "int", "*size": "int" };
    case "qcow2":
      return {
        file: ref(registry, false),
        "*backing": ref(registry, true),
        "*lazy-refcounts": "bool",
        "*pass-discard-request": "bool",
        "*pass-discard-snapshot": "bool",
        "*pass-discard-other": "bool",
        "*overlap-check": OVERLAP_CHECKS,
        "*cache-size": "int",
        "*l2-cache-size": "int",
        "*l2-cache-entry-size": "int",
        "*refcount-cache-size": "int",
        "*cache-clean-interval": "int",
        "*encrypt": "object",
        "*data-file": ref(registry, false),
      };
    case "nbd":
      return {
        server: "object",
        "*export": "str",
        "*bitmap": "str",
        "*tls-creds": "str",
        "*tls-hostname": "str",
        "*x-dirty-bitmap": "str",
        "*reconnect-delay": "uint32",
        "*open-timeout": "uint32",
      };
  }
  return null;
}

const OUR_TYPES: Record<OptionSpec["type"], ArgType> = {
  string: "str",
  bool: "bool",
  int: "int",
  size: "int",
  enum: "str",
};

/**
 * Checks one node's options (and its children's) as QEMU's input visitor reads
 * `BlockdevOptions`; returns them with their values typed (`--blockdev`'s key=value text,
 * `opts.keyval`, becomes numbers and booleans, as QEMU's keyval visitor makes it).
 * `opts.prefix` places them (`file.`, `options[0].`). Drivers QEMU does not have are checked
 * against their own options.
 */
export function checkBlockdevOptions(
  registry: DriverRegistry,
  options: Record<string, unknown>,
  opts: CheckOptions = {},
): Record<string, unknown> {
  const prefix = opts.prefix ?? "";
  const driver = options.driver;
  if (driver === undefined) throw genericError(`Parameter '${prefix}driver' is missing`);
  if (typeof driver !== "string") {
    throw genericError(`Invalid parameter type for '${prefix}driver', expected: string`);
  }
  const ours = registry.find(driver);
  if (!ours) throw genericError(`Parameter 'driver' does not accept value '${driver}'`);
  const schema: Record<string, ArgType> = { driver: "str", ...BASE };
  const theirs = branch(registry, driver);
  if (theirs) {
    Object.assign(schema, theirs);
  } else {
    // Key=value text is left for the driver to read (its sizes take suffixes).
    for (const [key, spec] of Object.entries(ours.options)) {
      const top = key.split(".")[0]!;
      if (top !== key) schema[`*${top}`] = "object";
      else {
        schema[`${spec.required ? "" : "*"}${key}`] = opts.keyval ? "any" : OUR_TYPES[spec.type];
      }
    }
    for (const child of ours.childOptions ?? []) schema[`*${child}`] = ref(registry, false);
    if (ours.supportsBacking) schema["*backing"] = ref(registry, true);
  }
  // Options of ours that QEMU's schema lacks are let through to the driver.
  for (const key of Object.keys(ours.options)) {
    const top = key.split(".")[0]!;
    if (!(top in schema) && !(`*${top}` in schema)) schema[`*${top}`] = "any";
  }
  return checkArgs(options, schema, opts);
}
