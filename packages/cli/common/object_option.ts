/**
 * The `--object` option of qemu-img and qemu-io (QEMU 7.2's `user_creatable_process_cmdline`,
 * which both call): each object is created as the option is met, and the first bad one stops
 * the command. This checks the definition with QEMU's messages, in its order: the syntax,
 * `help`, the type, each type's keys and their values, the id, a duplicate id, then what
 * creating the object checks (a secret's data or file, TLS credentials' directory); then the
 * object goes into the graph's objects (`Graph.objects`), where what the command opens finds
 * it: an `nbd` node's `tls-creds=ID` finds the `tls-creds-x509` object `ID`. The other types
 * change nothing a command does yet.
 *
 * @module
 */

import {
  BlockError,
  type Graph,
  keyValueItems,
  parseQemuJson,
  type UserObjects,
} from "@blockgraph/core";
import type { CliIo } from "./cli_io.ts";

/** How a key's value is checked: a QAPI scalar type or the values of an enum. */
type KeyType = "str" | "int" | "bool" | readonly string[];

/** A user-creatable type: its keys with their types and the help's type names. */
interface ObjectType {
  /** Keys and their types; absent: the keys are not checked. */
  readonly keys?: Readonly<Record<string, KeyType>>;
  /** Keys that must be given. */
  readonly required?: readonly string[];
  /** The `TYPE,help` lines (without the leading spaces), sorted. */
  readonly help: readonly string[];
}

const ENDPOINTS = ["client", "server"];
const TLS_KEYS: Record<string, KeyType> = {
  dir: "str",
  endpoint: ENDPOINTS,
  "verify-peer": "bool",
  priority: "str",
  loaded: "bool",
};
const TLS_HELP = [
  "dir=<string>",
  "endpoint=<QCryptoTLSCredsEndpoint>",
  "priority=<string>",
  "verify-peer=<bool>",
];
const SECRET_KEYS: Record<string, KeyType> = {
  data: "str",
  file: "str",
  format: ["raw", "base64"],
  keyid: "str",
  iv: "str",
  loaded: "bool",
};
const THROTTLE_KEYS: Record<string, KeyType> = { limits: "str" };
for (const what of ["bps", "iops"]) {
  for (const dir of ["total", "read", "write"]) {
    for (const tail of ["", "-max", "-max-length"]) {
      THROTTLE_KEYS[`x-${what}-${dir}${tail}`] = "int";
    }
  }
}
THROTTLE_KEYS["x-iops-size"] = "int";

/** The types qemu-img 7.2 can create, as `--object help` lists them. */
const TYPES: Record<string, ObjectType> = {
  "authz-list": {
    keys: { policy: ["deny", "allow"], rules: "str" },
    help: ["policy=<QAuthZListPolicy>", "rules=<QAuthZListRule>"],
  },
  "authz-list-file": { help: ["filename=<string>", "refresh=<bool>"] },
  "authz-simple": {
    keys: { identity: "str" },
    required: ["identity"],
    help: ["identity=<string>"],
  },
  "main-loop": {
    keys: { "aio-max-batch": "int", "thread-pool-min": "int", "thread-pool-max": "int" },
    help: ["aio-max-batch=<int>", "thread-pool-max=<int>", "thread-pool-min=<int>"],
  },
  "pr-manager-helper": {
    keys: { path: "str" },
    required: ["path"],
    help: ["path=<string>"],
  },
  secret: {
    keys: SECRET_KEYS,
    help: [
      "data=<string>",
      "file=<string>",
      "format=<QCryptoSecretFormat>",
      "iv=<string>",
      "keyid=<string>",
    ],
  },
  secret_keyring: {
    keys: { ...SECRET_KEYS, serial: "int" },
    required: ["serial"],
    help: ["format=<QCryptoSecretFormat>", "iv=<string>", "keyid=<string>", "serial=<int32_t>"],
  },
  "thread-context": {
    keys: { "cpu-affinity": "str", "node-affinity": "str" },
    help: ["cpu-affinity=<int>", "node-affinity=<int>"],
  },
  "throttle-group": {
    keys: THROTTLE_KEYS,
    help: Object.keys(THROTTLE_KEYS).map((k) =>
      `${k}=<${k === "limits" ? "ThrottleLimits" : "int"}>`
    )
      .sort(),
  },
  "tls-cipher-suites": { keys: TLS_KEYS, help: TLS_HELP },
  "tls-creds-anon": { keys: TLS_KEYS, help: TLS_HELP },
  "tls-creds-psk": {
    keys: { ...TLS_KEYS, username: "str" },
    help: [...TLS_HELP, "username=<string>"].sort(),
  },
  "tls-creds-x509": {
    keys: { ...TLS_KEYS, "sanity-check": "bool", passwordid: "str" },
    help: [...TLS_HELP, "passwordid=<string>", "sanity-check=<bool>"].sort(),
  },
};

/**
 * Types QEMU's object schema names that qemu-img cannot create: accepted by the schema,
 * then refused as an invalid object type (their own keys are not checked here).
 */
const OTHER_QAPI_TYPES = new Set([
  "authz-listfile",
  "authz-pam",
  "can-bus",
  "can-host-socketcan",
  "colo-compare",
  "cryptodev-backend",
  "cryptodev-backend-builtin",
  "cryptodev-vhost-user",
  "dbus-vmstate",
  "filter-buffer",
  "filter-dump",
  "filter-mirror",
  "filter-redirector",
  "filter-replay",
  "filter-rewriter",
  "input-barrier",
  "input-linux",
  "iothread",
  "memory-backend-epc",
  "memory-backend-file",
  "memory-backend-memfd",
  "memory-backend-ram",
  "pef-guest",
  "qtest",
  "rng-builtin",
  "rng-egd",
  "rng-random",
  "sev-guest",
  "s390-pv-guest",
  "x-remote-object",
  "x-vfio-user-server",
]);

/** QEMU's keyval syntax for `--object`: `type,key=value,...`; a bare `help` or `?` asks for help. */
function parseObject(text: string): { opts: Record<string, string>; help: boolean } {
  const opts: Record<string, string> = {};
  let help = false;
  let first = true;
  for (const { key, value } of keyValueItems(text)) {
    if (value === null) {
      if (key === "help" || key === "?") help = true;
      else if (first && key !== "") opts["qom-type"] = key;
      else if (key === "") throw new BlockError("EINVAL", "Invalid parameter ''");
      else throw new BlockError("EINVAL", `Expected '=' after parameter '${key}'`);
      first = false;
      continue;
    }
    if (key === "") throw new BlockError("EINVAL", "Invalid parameter ''");
    // The last of a repeated key wins, as QEMU's keyval does.
    opts[key] = value;
    first = false;
  }
  return { opts, help };
}

/**
 * A JSON `--object` (`{"qom-type": ...}`, read as QEMU reads JSON): its members as the
 * key=value form would give them.
 */
function parseJsonObject(text: string): Record<string, string> {
  const parsed = parseQemuJson(text);
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
    throw new BlockError("EINVAL", "Invalid parameter type, expected: object");
  }
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(parsed)) {
    out[k] = typeof v === "string" ? v : JSON.stringify(v);
  }
  return out;
}

function checkValue(key: string, value: string, type: KeyType): string | null {
  if (Array.isArray(type)) {
    return type.includes(value) ? null : `Parameter '${key}' does not accept value '${value}'`;
  }
  if (type === "int" && !/^-?\d+$/.test(value.trim())) return `Parameter '${key}' expects integer`;
  if (type === "bool" && !["on", "off", "yes", "no", "true", "false"].includes(value)) {
    return `Parameter '${key}' expects 'on' or 'off'`;
  }
  return null;
}

/** GLib's words for a file it could not read, as QEMU's secret object prints them. */
function readFailure(path: string, e: unknown): string {
  const why = e instanceof Deno.errors.NotFound
    ? "No such file or directory"
    : e instanceof Deno.errors.PermissionDenied
    ? "Permission denied"
    : e instanceof Deno.errors.IsADirectory
    ? "Is a directory"
    : BlockError.from(e).message;
  return `Unable to read ${path}: Failed to open file “${path}”: ${why}`;
}

/**
 * Creates the object `text` defines (`TYPE,id=ID,...` or JSON) in `graph.objects`. Returns
 * `null` to go on, or the exit status to stop with: 0 after printing help, `failStatus` after
 * passing QEMU's message to `report` (the command's `error_report`).
 *
 * @example
 * ```ts
 * import { Graph } from "@blockgraph/core";
 * import { defaultRegistry } from "@blockgraph/drivers";
 * import { captureIo } from "./cli_io.ts";
 * import { addObjectOption } from "./object_option.ts";
 * const graph = new Graph({ registry: defaultRegistry() });
 * const io = captureIo();
 * const report = (m: string) => io.err(`qemu-img: ${m}\n`);
 * console.assert(addObjectOption(graph, io, "secret,id=s0,data=x", report) === null);
 * console.assert(graph.objects.get("s0")?.data === "x");
 * console.assert(addObjectOption(graph, io, "secret,id=s0,data=y", report) === 1);
 * ```
 */
export function addObjectOption(
  graph: Graph,
  io: CliIo,
  text: string,
  report: (message: string) => void,
  failStatus = 1,
): number | null {
  const message = add(graph.objects, io, text);
  if (message === undefined) return 0;
  if (message === null) return null;
  report(message);
  return failStatus;
}

/** `undefined` when help was printed, `null` when created, else the error message. */
function add(objects: UserObjects, io: CliIo, text: string): string | null | undefined {
  let opts: Record<string, string>;
  let help = false;
  try {
    if (text.trimStart().startsWith("{")) opts = parseJsonObject(text);
    else ({ opts, help } = parseObject(text));
  } catch (e) {
    return BlockError.from(e).message;
  }
  const type = opts["qom-type"];
  const spec = type === undefined ? undefined : TYPES[type];
  if (help) {
    if (spec) io.out(`${type} options:\n` + spec.help.map((l) => `  ${l}\n`).join(""));
    else {
      io.out(
        "List of user creatable objects:\n" +
          Object.keys(TYPES).sort().map((t) => `  ${t}\n`).join(""),
      );
    }
    return undefined;
  }
  if (type === undefined) return "Parameter 'qom-type' is missing";
  if (!spec && !OTHER_QAPI_TYPES.has(type)) {
    return `Parameter 'qom-type' does not accept value '${type}'`;
  }
  const id = opts.id;
  if (id === undefined) return "Parameter 'id' is missing";
  if (spec?.keys) {
    for (const [key, value] of Object.entries(opts)) {
      if (key === "qom-type" || key === "id") continue;
      const keyType = spec.keys[key];
      if (keyType === undefined) return `Parameter '${key}' is unexpected`;
      const bad = checkValue(key, value, keyType);
      if (bad) return bad;
    }
  }
  const missing = spec?.required?.find((k) => opts[k] === undefined);
  if (missing !== undefined) return `Parameter '${missing}' is missing`;
  if (!/^[A-Za-z][A-Za-z0-9._-]*$/.test(id)) {
    return "Parameter 'id' expects an identifier\n" +
      "Identifiers consist of letters, digits, '-', '.', '_', starting with a letter.";
  }
  if (!spec) return `invalid object type: ${type}`;
  if (opts.loaded !== undefined) return `Property '${type}.loaded' is not writable`;
  if (objects.has(id)) {
    return `attempt to add duplicate property '${id}' to object (type 'container')`;
  }
  const failure = completeFailure(type, opts, objects);
  if (failure) return failure;
  objects.add({ ...opts, "qom-type": type, id });
  return null;
}

/**
 * What QEMU's `qcrypto_secret_lookup` finds wrong with `id` as the name of a secret (a
 * `keyid`, an `encrypt.key-secret`), or null when it names one.
 */
export function secretLookupFailure(objects: UserObjects, id: string): string | null {
  const type = objects.get(id)?.["qom-type"];
  if (type === undefined) return `No secret with id '${id}'`;
  if (type !== "secret" && type !== "secret_keyring") {
    return `Object with id '${id}' is not a secret`;
  }
  return null;
}

/**
 * What completing a `secret` finds wrong (QEMU's messages), or null: `data` and `file` both
 * or neither, a file that cannot be read, a `keyid` that names no secret.
 */
export function secretFailure(
  opts: Readonly<Record<string, unknown>>,
  objects: UserObjects,
): string | null {
  if (opts.data !== undefined && opts.file !== undefined) {
    return "'file' and 'data' are mutually exclusive";
  }
  if (opts.data === undefined && opts.file === undefined) {
    return "Either 'file' or 'data' must be provided";
  }
  if (typeof opts.file === "string") {
    try {
      Deno.readFileSync(opts.file);
    } catch (e) {
      return readFailure(opts.file, e);
    }
  }
  return typeof opts.keyid === "string" ? secretLookupFailure(objects, opts.keyid) : null;
}

/** What completing an object of `type` finds wrong (QEMU's `complete` methods), or null. */
function completeFailure(
  type: string,
  opts: Record<string, string>,
  objects: UserObjects,
): string | null {
  switch (type) {
    case "secret":
      return secretFailure(opts, objects);
    case "tls-cipher-suites":
      return opts.priority === undefined ? "'priority' property is not set" : null;
    case "tls-creds-psk":
    case "tls-creds-x509": {
      if (opts.dir === undefined) return "Missing 'dir' property value";
      if (type === "tls-creds-psk") return null;
      const ca = `${opts.dir}/ca-cert.pem`;
      try {
        Deno.statSync(ca);
      } catch {
        return `Unable to access credentials ${ca}: No such file or directory`;
      }
      return null;
    }
  }
  return null;
}
