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
  "encrypt.format": {
    type: "enum",
    description: "Encrypt the image, format choices: 'aes', 'luks'",
    values: ["aes", "qcow", "luks"],
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
 * The LUKS region (header and key material) of a new image that `options` ask to encrypt,
 * the password from the secret `encrypt.key-secret` names among `objects`; null when they ask
 * for no encryption. Errors carry QEMU's messages where QEMU has one.
 */
export async function newImageEncryption(
  options: OptionValues,
  objects: UserObjects | undefined,
  shape: EncryptedImageShape,
): Promise<Uint8Array | null> {
  const members = Object.keys(ENCRYPT_CREATE_OPTIONS).filter(
    (k) => k.startsWith("encrypt.") && options[k] !== undefined,
  );
  let format = options["encrypt.format"] as string | undefined;
  if (options.encryption === true) {
    if (format !== undefined) {
      throw new BlockError(
        "EINVAL",
        "'encrypt.format' and its alias 'encryption' can't be used at the same time",
      );
    }
    format = "qcow";
  }
  if (format === undefined) {
    if (members.length > 0) throw new BlockError("EINVAL", "Parameter 'encrypt.format' is missing");
    return null;
  }
  const secret = options["encrypt.key-secret"] as string | undefined;
  if (secret === undefined) {
    throw new BlockError("EINVAL", "Parameter 'encrypt.key-secret' is required for cipher");
  }
  const password = await secretPassword(objects ?? new UserObjects(), secret);
  if (format !== "luks") {
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
