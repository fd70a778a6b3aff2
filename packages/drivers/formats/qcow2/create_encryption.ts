/**
 * The encryption of a new qcow2 image (`qemu-img create -o encrypt.format=luks,
 * encrypt.key-secret=ID`): the options as QEMU names them, and the LUKS header the image gets
 * (`crypto/luks_create.ts`), made before any file is created so that every refusal leaves
 * nothing behind. `formatQcow2` places the header's region after the L1 table, as QEMU's
 * allocation does, and points the crypto header extension at it.
 *
 * Refused, where QEMU goes on:
 * - the old AES method (`encrypt.format=aes`, `encryption=on`): QEMU keeps it to read old
 *   images and refuses it in its system emulators; it leaks patterns (the IV is the sector
 *   number in the clear, the key the password itself), so blockgraph does not make new ones;
 * - an external data file: blockgraph does not write encrypted data files;
 * - preallocation of a version 2 image: preallocated clusters must read as zeros, and on
 *   version 3 they are allocated with the zero flag (QEMU preallocates them without it, and
 *   they read back as the decryption of zeros, that is, garbage); version 2 has no such flag.
 *
 * @module
 */

import { BlockError, type OptionSchema, type OptionValues, UserObjects } from "@blockgraph/core";
import { createLuks, type LuksCreateOptions } from "../../crypto/luks_create.ts";
import { secretPassword } from "../../crypto/secret.ts";
import { checkEncryptedPrealloc } from "./encryption.ts";

/** qcow2's encryption create options, as QEMU 7.2 lists them. */
export const ENCRYPT_CREATE_OPTIONS: OptionSchema = {
  encryption: {
    type: "bool",
    description: "Encrypt the image with format 'aes'. (Deprecated in favor of encrypt.format=aes)",
  },
  // Checked by encryptionRequest, with QAPI's message.
  "encrypt.format": {
    type: "string",
    description: "Encrypt the image, format choices: 'aes', 'luks'",
  },
  "encrypt.key-secret": {
    type: "string",
    description: "ID of secret providing qcow AES key or LUKS passphrase",
  },
  "encrypt.cipher-alg": { type: "string", description: "Name of encryption cipher algorithm" },
  "encrypt.cipher-mode": { type: "string", description: "Name of encryption cipher mode" },
  "encrypt.ivgen-alg": { type: "string", description: "Name of IV generator algorithm" },
  "encrypt.ivgen-hash-alg": {
    type: "string",
    description: "Name of IV generator hash algorithm",
  },
  "encrypt.hash-alg": { type: "string", description: "Name of encryption hash algorithm" },
  "encrypt.iter-time": { type: "int", description: "Time to spend in PBKDF in milliseconds" },
};

/** The encryption create options' names, in QEMU's order. */
export const ENCRYPTION_KEYS: readonly string[] = Object.keys(ENCRYPT_CREATE_OPTIONS);

/** What a create asks to encrypt with. */
export interface EncryptionRequest {
  /** `qcow` (the old AES method, also named `aes`) or `luks`. */
  readonly format: "qcow" | "luks";
  /** `encrypt.key-secret` is given. */
  readonly keySecret: boolean;
}

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

/**
 * The encryption `options` ask for, after QAPI's checks (QEMU makes them as qcow2's create
 * turns its options into QAPI ones, before the image's own checks): `null` for none, the
 * format (`qcow` or `luks`) and whether a key secret is named, or the error QEMU reports.
 * Values are text as typed, or (`encryption`) a boolean.
 */
export function encryptionRequest(
  options: Readonly<Record<string, unknown>>,
): EncryptionRequest | { error: string } | null {
  const legacy = options["encryption"];
  let format = options["encrypt.format"] as string | undefined;
  if (legacy === "on" || legacy === true) {
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
    if (allowed && !allowed.includes(String(options[key]))) {
      return { error: `Parameter '${member}' does not accept value '${options[key]}'` };
    }
  }
  return { format, keySecret: options["encrypt.key-secret"] !== undefined };
}

/** What the new image must be like for its encryption. */
export interface EncryptedImageShape {
  /** qcow2 version. */
  readonly version: number;
  /** An external data file is named. */
  readonly dataFile: boolean;
  /** The preallocation mode. */
  readonly preallocation: string;
}

/**
 * The LUKS region (header and key material) of a new image whose `options` make `request`
 * ({@link encryptionRequest}), the password from the secret `encrypt.key-secret` names among
 * `objects`; null for no encryption. Errors carry QEMU's messages where QEMU has one.
 */
export async function newImageEncryption(
  request: EncryptionRequest | null,
  options: OptionValues,
  objects: UserObjects | undefined,
  shape: EncryptedImageShape,
): Promise<Uint8Array | null> {
  if (request === null) return null;
  const secret = options["encrypt.key-secret"] as string | undefined;
  if (secret === undefined) {
    throw new BlockError("EINVAL", "Parameter 'encrypt.key-secret' is required for cipher");
  }
  const password = await secretPassword(objects ?? new UserObjects(), secret);
  if (request.format !== "luks") {
    throw new BlockError(
      "ENOTSUP",
      "Creating images encrypted with the old AES method (encrypt.format=aes) is not " +
        "supported: it is insecure, and QEMU keeps it only to read old images; use " +
        "encrypt.format=luks",
    );
  }
  if (shape.dataFile) {
    throw new BlockError(
      "ENOTSUP",
      "Encrypted images with an external data file are not supported",
    );
  }
  checkEncryptedPrealloc(true, shape.version, shape.preallocation);
  const text = (key: string) => options[`encrypt.${key}`] as string | undefined;
  const luks: LuksCreateOptions = {
    cipherAlg: text("cipher-alg"),
    cipherMode: text("cipher-mode"),
    ivgenAlg: text("ivgen-alg"),
    ivgenHashAlg: text("ivgen-hash-alg"),
    hashAlg: text("hash-alg"),
    iterTime: options["encrypt.iter-time"] as number | undefined,
  };
  return (await createLuks(luks, password)).region;
}
