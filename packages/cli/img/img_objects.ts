/**
 * qemu-img's `--object`: qemu-img creates each object as it meets the option and stops on
 * the first bad one. The objects its subcommands could use here (secrets, TLS credentials,
 * authorization lists) change nothing a subcommand does yet, so this only checks them
 * with qemu-img 7.2's messages: the type, the id and each type's own keys.
 *
 * @module
 */

import { parseKeyValue } from "@blockgraph/core";
import type { CliIo } from "../common/cli_io.ts";
import { imgError } from "./img_common.ts";

/** A user-creatable type qemu-img knows: its keys (absent: not checked) and required ones. */
interface ObjectType {
  readonly keys?: readonly string[];
  readonly required?: readonly string[];
}

const TLS_KEYS = ["dir", "endpoint", "verify-peer", "priority", "loaded"];

const TYPES: Record<string, ObjectType> = {
  secret: { keys: ["data", "file", "format", "keyid", "iv", "loaded"] },
  secret_keyring: {},
  "authz-simple": { keys: ["identity"], required: ["identity"] },
  "authz-list": {},
  "throttle-group": {},
  "tls-cipher-suites": {},
  "tls-creds-anon": { keys: TLS_KEYS },
  "tls-creds-psk": { keys: [...TLS_KEYS, "username"] },
  "tls-creds-x509": { keys: [...TLS_KEYS, "sanity-check", "passwordid"] },
};

/** Checks one `--object` definition; prints qemu-img's message and returns false if bad. */
export function imgObject(io: CliIo, text: string): boolean {
  let opts: Record<string, string>;
  try {
    opts = parseKeyValue(text, "qom-type");
  } catch (e) {
    imgError(io, (e as Error).message);
    return false;
  }
  const type = opts["qom-type"];
  if (type === undefined) {
    imgError(io, "Parameter 'qom-type' is missing");
    return false;
  }
  const spec = TYPES[type];
  if (!spec) {
    imgError(io, `Parameter 'qom-type' does not accept value '${type}'`);
    return false;
  }
  if (opts.id === undefined) {
    imgError(io, "Parameter 'id' is missing");
    return false;
  }
  if (spec.keys) {
    const extra = Object.keys(opts).find((k) =>
      k !== "qom-type" && k !== "id" && !spec.keys!.includes(k)
    );
    if (extra !== undefined) {
      imgError(io, `Parameter '${extra}' is unexpected`);
      return false;
    }
  }
  const missing = spec.required?.find((k) => opts[k] === undefined);
  if (missing !== undefined) {
    imgError(io, `Parameter '${missing}' is missing`);
    return false;
  }
  if (type === "secret" && opts.data === undefined && opts.file === undefined) {
    imgError(io, "Either 'file' or 'data' must be provided");
    return false;
  }
  return true;
}
