/**
 * The value of a `secret` object (`--object secret,id=ID,...`, QMP `object-add`), as QEMU
 * 7.2's `qcrypto_secret_lookup` gives it: the `data` or the `file`'s bytes, decoded from
 * base64 with `format=base64`, or, with `keyid`, decrypted with the 32-byte secret `keyid`
 * names (AES-256-CBC, the base64 `iv`, the data base64 with `format=base64`, the padding
 * count in the last byte removed). The objects' definitions were checked when they were
 * created (`--object`'s checks); what only using them finds is reported here with QEMU's
 * messages.
 *
 * @module
 */

import { BlockError, type UserObjects } from "@blockgraph/core";
import { loadNodeCrypto } from "./node_crypto.ts";

function decodeBase64(text: string): Uint8Array {
  let bin: string;
  try {
    bin = atob(text.replace(/\s+/g, ""));
  } catch {
    throw new BlockError("EINVAL", "Unable to decode base64 data");
  }
  return Uint8Array.from(bin, (c) => c.charCodeAt(0));
}

function loadRaw(obj: Record<string, unknown>): Uint8Array {
  if (typeof obj.data === "string") return new TextEncoder().encode(obj.data);
  if (typeof obj.file === "string") {
    try {
      return Deno.readFileSync(obj.file);
    } catch (e) {
      const msg = e instanceof Error ? e.message : String(e);
      throw new BlockError("EIO", `Unable to read ${obj.file}: ${msg}`);
    }
  }
  throw new BlockError("EINVAL", `Secret with id '${String(obj.id)}' has no data`);
}

/**
 * The bytes of secret `id` among `objects`. A missing object: "No secret with id 'ID'";
 * another type: "Object with id 'ID' is not a secret" (EINVAL).
 */
export function secretBytes(objects: UserObjects, id: string): Promise<Uint8Array> {
  return lookup(objects, id, 0);
}

/** {@link secretBytes}, `depth` secrets deep in a chain of `keyid`s. */
async function lookup(objects: UserObjects, id: string, depth: number): Promise<Uint8Array> {
  const obj = objects.get(id);
  if (!obj) throw new BlockError("EINVAL", `No secret with id '${id}'`);
  if (obj["qom-type"] !== "secret") {
    throw new BlockError("EINVAL", `Object with id '${id}' is not a secret`);
  }
  const raw = loadRaw(obj);
  const base64 = obj.format === "base64";
  if (obj.keyid === undefined) {
    return base64 ? decodeBase64(new TextDecoder().decode(raw)) : raw;
  }
  if (depth > 8) throw new BlockError("ELOOP", `Secret '${id}' is encrypted with itself`);
  const key = await lookup(objects, String(obj.keyid), depth + 1);
  if (key.length !== 32) throw new BlockError("EINVAL", "Key should be 32 bytes in length");
  if (typeof obj.iv !== "string") {
    throw new BlockError("EINVAL", "IV is required to decrypt secret");
  }
  const iv = decodeBase64(obj.iv);
  if (iv.length !== 16) {
    throw new BlockError("EINVAL", `Expected IV size 16 not ${iv.length}`);
  }
  const ciphertext = base64 ? decodeBase64(new TextDecoder().decode(raw)) : raw;
  if (ciphertext.length === 0 || ciphertext.length % 16 !== 0) {
    throw new BlockError(
      "EINVAL",
      `Length ${ciphertext.length} must be a multiple of block size 16`,
    );
  }
  const d = (await loadNodeCrypto()).createDecipheriv("aes-256-cbc", key, iv);
  d.setAutoPadding(false);
  const plain = new Uint8Array(d.update(ciphertext));
  const pad = plain[plain.length - 1]!;
  if (pad > 16 || pad > plain.length) {
    throw new BlockError(
      "EINVAL",
      `Incorrect number of padding bytes (${pad}) found on decrypted data`,
    );
  }
  return plain.slice(0, plain.length - pad);
}

/**
 * Secret `id` as UTF-8 text's bytes (a password): QEMU's `qcrypto_secret_lookup_as_utf8`,
 * "Data from secret ID is not valid UTF-8" when it is not.
 */
export async function secretPassword(objects: UserObjects, id: string): Promise<Uint8Array> {
  const bytes = await secretBytes(objects, id);
  try {
    new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw new BlockError("EINVAL", `Data from secret ${id} is not valid UTF-8`);
  }
  return bytes;
}
