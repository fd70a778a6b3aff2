/**
 * qcow2's encryption create options (`encryption`, `encrypt.*`) on qemu-img's side of the
 * driver, for an `img create` or a `convert` target: QemuOpts' checks as it parses them,
 * before the "Formatting" line (`encryption` is a boolean and `encrypt.iter-time` a number),
 * and the values the driver takes. The qcow2 driver makes the rest of QEMU's checks, in its
 * order (`formats/qcow2/create_encryption.ts` in the drivers: QAPI's, the image's own, then
 * the key secret and the cipher), all before any file is created: unlike QEMU, which creates
 * the file before it fails and then deletes it, a refusal leaves nothing behind. `img
 * measure` takes the same options and counts a LUKS header ({@link luksHeaderBytes}).
 *
 * @module
 */

import type { OptionValues } from "@blockgraph/core";
import { ENCRYPTION_KEYS, encryptionRequest, luksPayloadOffset } from "@blockgraph/drivers";

/** Whether `key` is one of qcow2's encryption create options. */
export function isEncryptionKey(key: string): boolean {
  return ENCRYPTION_KEYS.includes(key);
}

/**
 * QemuOpts' check of one option's text as it parses it: an error message, or null. Numbers
 * are unsigned decimal, octal or hex, as `qemu_strtou64` reads them.
 */
export function encryptionOptionError(key: string, value: string): string | null {
  if (key === "encryption" && value !== "on" && value !== "off") {
    return "Parameter 'encryption' expects 'on' or 'off'";
  }
  if (key === "encrypt.iter-time" && !/^(0[xX][0-9a-fA-F]+|[0-9]+)$/.test(value)) {
    return "Parameter 'encrypt.iter-time' expects a number";
  }
  return null;
}

/**
 * The encryption options as the qcow2 driver takes them (`ENCRYPT_CREATE_OPTIONS`): the text
 * as given, but `encryption` a boolean and `encrypt.iter-time` a number.
 */
export function encryptionValues(options: Readonly<Record<string, string>>): OptionValues {
  const out: OptionValues = {};
  for (const [key, value] of Object.entries(options)) {
    if (key === "encryption") out[key] = value === "on";
    else if (key === "encrypt.iter-time") out[key] = parseQemuNumber(value);
    else out[key] = value;
  }
  return out;
}

/** An unsigned number as `qemu_strtou64` reads it: decimal, octal (leading 0) or hex. */
function parseQemuNumber(text: string): number {
  if (/^0[xX]/.test(text)) return parseInt(text.slice(2), 16);
  if (/^0[0-7]+$/.test(text)) return parseInt(text, 8);
  return Number(text);
}

/** Key bytes of LUKS's ciphers (`qcrypto_cipher_get_key_len`). */
const LUKS_KEY_BYTES: Readonly<Record<string, number>> = {
  "aes-128": 16,
  "aes-192": 24,
  "aes-256": 32,
  "cast5-128": 16,
  "serpent-128": 16,
  "serpent-192": 24,
  "serpent-256": 32,
  "twofish-128": 16,
  "twofish-192": 24,
  "twofish-256": 32,
};

/**
 * The bytes a LUKS header takes in front of the encrypted payload for `options`' cipher
 * (`encrypt.cipher-alg`, default aes-256; `encrypt.cipher-mode`, default xts, which doubles
 * the key): 4 KiB of header, then 8 key slots of key bytes x 4000 stripes each, every slot
 * rounded up to 4 KiB. Or the error QEMU reports for the options (QAPI's checks, the key
 * secret as `secretFailure` judges it, a cipher its crypto library refuses).
 *
 * qemu-img 7.2's `measure` gets this number by setting up a real LUKS header, PBKDF timing
 * included: it fails with "Unable to get accurate CPU usage" on some runs and machines, and
 * aborts on an assertion for 192-bit keys outside xts. This is the same number, computed.
 */
export function luksHeaderBytes(
  options: Readonly<Record<string, string>>,
  secretFailure: (id: string) => string | null,
): number | { error: string } {
  const members: Record<string, string> = { "encrypt.format": "luks" };
  for (const k of ENCRYPTION_KEYS.slice(2)) if (options[k] !== undefined) members[k] = options[k];
  const request = encryptionRequest(members);
  if (request !== null && "error" in request) return request;
  const secret = options["encrypt.key-secret"];
  if (secret === undefined) {
    return { error: "Parameter 'encrypt.key-secret' is required for cipher" };
  }
  const failure = secretFailure(secret);
  if (failure !== null) return { error: failure };
  const alg = options["encrypt.cipher-alg"] ?? "aes-256";
  const mode = options["encrypt.cipher-mode"] ?? "xts";
  const keyBytes = LUKS_KEY_BYTES[alg];
  if (keyBytes === undefined) return { error: `Algorithm '${alg}' not supported` };
  // XTS needs a 16-byte cipher block; CAST5's is 8.
  if (mode === "xts" && alg === "cast5-128") return { error: "Unsupported cipher mode xts" };
  return luksPayloadOffset(keyBytes * (mode === "xts" ? 2 : 1));
}
