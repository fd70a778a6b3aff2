/**
 * A new LUKS 1 volume header, as QEMU's `qcrypto_block_luks_create` lays it out (and
 * cryptsetup opens): a random master key; its PBKDF2 digest; key slot 0 holding the master
 * key split into 4000 stripes (`af_split.ts`) and encrypted with the password's PBKDF2; slots
 * 1 to 7 inactive. The header takes 4 KiB, each slot's material the next 4 KiB-rounded area;
 * the payload follows them ({@link luksPayloadOffset}).
 *
 * Iteration counts come from QEMU's rule: the rate this machine derives keys at
 * (`pbkdf2Rate`), times `iter-time` (2 s by default) for the slot, an eighth of that for the
 * master key digest, at least 1000 each. Only AES ciphers are made (the only block cipher
 * here), and not aes-192 outside XTS (key material QEMU aborts on); a request for another is
 * refused before anything is derived.
 *
 * @module
 */

import { BlockError } from "@blockgraph/core";
import {
  LUKS_ALIGN_BYTES,
  LUKS_DIGEST_BYTES,
  LUKS_SALT_BYTES,
  LUKS_SLOTS,
  LUKS_STRIPES,
  type LuksHeader,
  type LuksKeySlot,
  luksPayloadOffset,
  luksSlotBytes,
  serializeLuksHeader,
} from "./luks_header.ts";
import { DEFAULT_ITER_TIME, fillKeyslot, luksIterations, randomBytes } from "./luks_keyslots.ts";
import { hashDigestBytes, pbkdf2, pbkdf2Rate } from "./pbkdf2.ts";
import { CRYPT_SECTOR } from "./sector_cipher.ts";

/** What a new volume is encrypted with: QEMU's `encrypt.*` create options (defaults as QEMU's). */
export interface LuksCreateOptions {
  /** `aes-128`, `aes-192` or `aes-256` (default). */
  readonly cipherAlg?: string | undefined;
  /** `xts` (default), `cbc` or `ecb`. */
  readonly cipherMode?: string | undefined;
  /** `plain64` (default), `plain` or `essiv`. */
  readonly ivgenAlg?: string | undefined;
  /** ESSIV's hash (default sha256). */
  readonly ivgenHashAlg?: string | undefined;
  /** PBKDF2's and the splitter's hash (default sha256). */
  readonly hashAlg?: string | undefined;
  /** Milliseconds a key slot's PBKDF2 should take (default 2000). */
  readonly iterTime?: number | undefined;
}

/** A new volume's header. */
export interface NewLuks {
  /** The parsed form. */
  readonly header: LuksHeader;
  /** Header and key material: the {@link luksPayloadOffset} bytes before the payload. */
  readonly region: Uint8Array;
}

/** The options' cipher, checked: refused as QEMU refuses it, or as blockgraph cannot make it. */
function cipherOf(o: LuksCreateOptions) {
  const alg = o.cipherAlg ?? "aes-256";
  const mode = o.cipherMode ?? "xts";
  const ivgen = o.ivgenAlg ?? "plain64";
  const bits = /^aes-(128|192|256)$/.exec(alg);
  if (!bits) {
    throw new BlockError(
      "ENOTSUP",
      `Cipher algorithm '${alg}' is not supported (blockgraph encrypts with AES only)`,
    );
  }
  if (mode !== "xts" && mode !== "cbc" && mode !== "ecb") {
    throw new BlockError("ENOTSUP", `Cipher mode '${mode}' is not supported`);
  }
  if (ivgen !== "plain" && ivgen !== "plain64" && ivgen !== "essiv") {
    throw new BlockError("ENOTSUP", `IV generator '${ivgen}' is not supported`);
  }
  const keyBytes = (Number(bits[1]) / 8) * (mode === "xts" ? 2 : 1);
  if ((keyBytes * LUKS_STRIPES) % CRYPT_SECTOR !== 0) {
    // QEMU 7.2 asserts that the key material is whole sectors, and aborts on such an image.
    throw new BlockError(
      "ENOTSUP",
      `Cipher ${alg} in mode ${mode} is not supported: its key material ` +
        `(${keyBytes * LUKS_STRIPES} bytes) is not whole sectors, which QEMU cannot open; use ` +
        "cipher mode xts or another key size",
    );
  }
  const ivHash = ivgen === "essiv" ? o.ivgenHashAlg ?? "sha256" : undefined;
  return { mode, ivgen, ivHash, keyBytes } as const;
}

/** Makes the header of a new volume whose only key slot opens with `password`. */
export async function createLuks(o: LuksCreateOptions, password: Uint8Array): Promise<NewLuks> {
  const c = cipherOf(o);
  const hash = o.hashAlg ?? "sha256";
  // Hashes checked before anything is derived.
  hashDigestBytes(hash);
  if (c.ivHash !== undefined) hashDigestBytes(c.ivHash);
  const masterKey = randomBytes(c.keyBytes);
  const iterTime = o.iterTime ?? DEFAULT_ITER_TIME;
  const perBlock = await pbkdf2Rate(hash);
  const mkSalt = randomBytes(LUKS_SALT_BYTES);
  // QEMU divides the master key's share by 8, as cryptsetup does.
  const mkIterations = luksIterations(perBlock, hash, LUKS_DIGEST_BYTES, iterTime, 8);
  const mkDigest = await pbkdf2(hash, masterKey, mkSalt, mkIterations, LUKS_DIGEST_BYTES);
  const payload = luksPayloadOffset(c.keyBytes);
  const slotSectors = luksSlotBytes(c.keyBytes) / CRYPT_SECTOR;
  const slots: LuksKeySlot[] = [];
  for (let i = 0; i < LUKS_SLOTS; i++) {
    slots.push({
      active: false,
      iterations: 0,
      salt: new Uint8Array(LUKS_SALT_BYTES),
      keyOffset: LUKS_ALIGN_BYTES / CRYPT_SECTOR + i * slotSectors,
      stripes: LUKS_STRIPES,
    });
  }
  const header: LuksHeader = {
    cipherName: "aes",
    cipherMode: `${c.mode}-${c.ivgen}${c.ivHash === undefined ? "" : `:${c.ivHash}`}`,
    mode: c.mode,
    ivgen: c.ivgen,
    ...(c.ivHash === undefined ? {} : { ivHash: c.ivHash }),
    hashSpec: hash,
    payloadOffset: payload / CRYPT_SECTOR,
    keyBytes: c.keyBytes,
    mkDigest,
    mkSalt,
    mkIterations,
    uuid: crypto.randomUUID(),
    slots,
  };
  const iterations = luksIterations(perBlock, hash, c.keyBytes, iterTime);
  const filled = await fillKeyslot(header, 0, masterKey, password, iterations);
  slots[0] = filled.slot;
  const region = new Uint8Array(payload);
  region.set(serializeLuksHeader(header), 0);
  region.set(filled.material, filled.slot.keyOffset * CRYPT_SECTOR);
  return { header, region };
}
