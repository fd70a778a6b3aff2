/**
 * qcow2's encryption create options (`encryption`, `encrypt.*`) as qemu-img 7.2 checks them,
 * for an `img create` (or a `convert` target) that blockgraph's qcow2 cannot honour: it does
 * not encrypt.
 *
 * The options are still parsed and checked as QEMU does, in its order, so that a script gets
 * the answer it would get from qemu-img wherever the answer is an error:
 * - as QemuOpts parses them, before the "Formatting" line: `encryption` is a boolean and
 *   `encrypt.iter-time` a number;
 * - as qcow2's create turns them into QAPI options: `encryption=on` is `encrypt.format=qcow`
 *   and may not come with `encrypt.format`; `aes` is `qcow`; the other `encrypt.*` options
 *   need a format, the qcow format takes only `encrypt.key-secret`, and LUKS checks its
 *   algorithm names;
 * - then the image's own checks (cluster size, compat, ...), and only then the encryption
 *   itself: without `encrypt.key-secret` QEMU's "required for cipher" error, with one ours
 *   (blockgraph does not encrypt images).
 *
 * `encryption=off` asks for nothing and is accepted, as QEMU accepts it. Unlike QEMU, which
 * creates the file before it fails and then deletes it, nothing is created or truncated.
 * `img measure` takes the same options and counts a LUKS header ({@link luksHeaderBytes}).
 *
 * @module
 */

import { luksPayloadOffset } from "@blockgraph/drivers";

/** The options, in the order QEMU's "Formatting" line prints them (before all others). */
export const ENCRYPTION_KEYS: readonly string[] = [
  "encryption",
  "encrypt.format",
  "encrypt.key-secret",
  "encrypt.cipher-alg",
  "encrypt.cipher-mode",
  "encrypt.ivgen-alg",
  "encrypt.ivgen-hash-alg",
  "encrypt.hash-alg",
  "encrypt.iter-time",
];

/** QEMU 7.2's names for LUKS's enumerated members (`qapi/crypto.json`). */
const LUKS_ENUMS: Readonly<Record<string, readonly string[]>> = {
  "cipher-alg": [
    "aes-128",
    "aes-192",
    "aes-256",
    "des",
    "3des",
    "cast5-128",
    "serpent-128",
    "serpent-192",
    "serpent-256",
    "twofish-128",
    "twofish-192",
    "twofish-256",
  ],
  "cipher-mode": ["ecb", "cbc", "xts", "ctr"],
  "ivgen-alg": ["plain", "plain64", "essiv"],
  "ivgen-hash-alg": ["md5", "sha1", "sha224", "sha256", "sha384", "sha512", "ripemd160"],
  "hash-alg": ["md5", "sha1", "sha224", "sha256", "sha384", "sha512", "ripemd160"],
};

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
 * The encryption `options` ask for, after QAPI's checks: `null` for none, the format
 * (`qcow` or `luks`) and whether a key secret is named, or the error QEMU reports.
 */
export function encryptionRequest(
  options: Readonly<Record<string, string>>,
): { format: "qcow" | "luks"; keySecret: boolean } | { error: string } | null {
  const legacy = options["encryption"];
  let format = options["encrypt.format"];
  if (legacy === "on") {
    if (format !== undefined) {
      return {
        error: "'encrypt.format' and its alias 'encryption' can't be used at the same time",
      };
    }
    format = "qcow";
  }
  const members = ENCRYPTION_KEYS.slice(2).filter((k) => options[k] !== undefined);
  if (format === undefined) {
    return members.length > 0 ? { error: "Parameter 'encrypt.format' is missing" } : null;
  }
  if (format === "aes") format = "qcow";
  if (format !== "qcow" && format !== "luks") {
    return { error: `Parameter 'format' does not accept value '${format}'` };
  }
  for (const key of members) {
    const member = key.slice("encrypt.".length);
    if (format === "qcow" && member !== "key-secret") {
      return { error: `Parameter '${key}' is unexpected` };
    }
    const allowed = LUKS_ENUMS[member];
    if (allowed && !allowed.includes(options[key]!)) {
      return { error: `Parameter '${member}' does not accept value '${options[key]}'` };
    }
  }
  return { format, keySecret: options["encrypt.key-secret"] !== undefined };
}

/** Why an encryption request that passed every check still fails here. */
export function encryptionRefusal(request: { format: string; keySecret: boolean }): string {
  return request.keySecret
    ? `Encrypted qcow2 images (encrypt.format=${
      request.format === "qcow" ? "aes" : request.format
    }) cannot be created: blockgraph does not implement qcow2 encryption`
    : "Parameter 'encrypt.key-secret' is required for cipher";
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
