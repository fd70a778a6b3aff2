/**
 * The LUKS 1 header (cryptsetup's on-disk format, version 1.2.1, as QEMU's `crypto/block-luks.c`
 * reads and writes it): 592 big-endian bytes, the cipher's name and mode, the hash of the key
 * derivation, the payload's offset, the key length, the master key's digest with its salt and
 * iterations, a UUID and eight key slots (each: active or not, iterations, salt, where its key
 * material lies in sectors, and its stripe count). Offsets are in 512-byte sectors from the
 * start of the header; in a qcow2 image the header is a region of the file that the "full disk
 * encryption header pointer" extension names, and the payload offset is not used.
 *
 * @module
 */

import { BlockError } from "@blockgraph/core";
import { type CipherMode, CRYPT_SECTOR, type IvGenAlg } from "./sector_cipher.ts";

/** LUKS's magic: "LUKS" then 0xBA 0xBE. */
export const LUKS_MAGIC: readonly number[] = [0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe];
/** The header's bytes before the key material. */
export const LUKS_HEADER_BYTES = 592;
/** The value of an active key slot's first word. */
export const LUKS_SLOT_ACTIVE = 0x00ac71f3;
/** The value of an inactive key slot's first word. */
export const LUKS_SLOT_INACTIVE = 0x0000dead;
/** The stripes of every key slot QEMU and cryptsetup write (and the only count QEMU opens). */
export const LUKS_STRIPES = 4000;
/** The master key digest's length. */
export const LUKS_DIGEST_BYTES = 20;
/** The salts' length. */
export const LUKS_SALT_BYTES = 32;
/** Where the key slots start in the header. */
const SLOT_AT = 208;
const SLOT_BYTES = 48;
/** The number of key slots. */
export const LUKS_SLOTS = 8;
/** The header's area before the first key slot, and the unit key slots are rounded up to. */
export const LUKS_ALIGN_BYTES = 4096;

/**
 * The bytes a LUKS volume's header takes in front of its payload for a master key of
 * `keyBytes` (XTS: both halves), as QEMU and cryptsetup lay it out: 4 KiB of header, then
 * eight key slots of `keyBytes` x 4000 stripes, each rounded up to 4 KiB.
 */
export function luksPayloadOffset(keyBytes: number): number {
  return LUKS_ALIGN_BYTES + LUKS_SLOTS * luksSlotBytes(keyBytes);
}

/** The bytes of a key slot's material in volume `h`: its split key, in whole sectors. */
export function luksMaterialBytes(h: LuksHeader): number {
  return Math.ceil((h.keyBytes * LUKS_STRIPES) / CRYPT_SECTOR) * CRYPT_SECTOR;
}

/** The bytes each key slot's material takes for a master key of `keyBytes`, rounded to 4 KiB. */
export function luksSlotBytes(keyBytes: number): number {
  return Math.ceil(keyBytes * LUKS_STRIPES / LUKS_ALIGN_BYTES) * LUKS_ALIGN_BYTES;
}

/** One key slot. */
export interface LuksKeySlot {
  /** Whether it holds a key. */
  readonly active: boolean;
  /** PBKDF2 iterations of its password. */
  readonly iterations: number;
  /** PBKDF2 salt of its password. */
  readonly salt: Uint8Array;
  /** Where its key material starts, in sectors from the header. */
  readonly keyOffset: number;
  /** How many stripes the key is split into. */
  readonly stripes: number;
}

/** A parsed LUKS 1 header. */
export interface LuksHeader {
  /** The cipher's name (`aes`, `serpent`, ...). */
  readonly cipherName: string;
  /** The cipher mode with its IV generator (`xts-plain64`, `cbc-essiv:sha256`). */
  readonly cipherMode: string;
  /** The mode alone. */
  readonly mode: string;
  /** The IV generator alone (`plain64`), "" for none. */
  readonly ivgen: string;
  /** ESSIV's hash, when given. */
  readonly ivHash?: string;
  /** The key derivation's and the splitter's hash (`sha256`). */
  readonly hashSpec: string;
  /** The payload's offset in sectors. */
  readonly payloadOffset: number;
  /** The master key's length in bytes (XTS: both halves). */
  readonly keyBytes: number;
  /** PBKDF2 of the master key, to check a candidate. */
  readonly mkDigest: Uint8Array;
  /** The salt of that digest. */
  readonly mkSalt: Uint8Array;
  /** Its iterations. */
  readonly mkIterations: number;
  /** The UUID, as text. */
  readonly uuid: string;
  /** The eight key slots. */
  readonly slots: readonly LuksKeySlot[];
}

/** NUL-terminated ASCII at `at`, `len` bytes at most. */
function text(b: Uint8Array, at: number, len: number): string {
  let s = "";
  for (let i = at; i < at + len && b[i] !== 0; i++) s += String.fromCharCode(b[i]!);
  return s;
}

/**
 * Parses the first {@link LUKS_HEADER_BYTES} of `b`. Not LUKS: "Volume is not in LUKS format"
 * (QEMU's message); another version: "Unsupported LUKS version N".
 */
export function parseLuksHeader(b: Uint8Array): LuksHeader {
  if (b.length < LUKS_HEADER_BYTES || !LUKS_MAGIC.every((m, i) => b[i] === m)) {
    throw new BlockError("EINVAL", "Volume is not in LUKS format");
  }
  const d = new DataView(b.buffer, b.byteOffset, LUKS_HEADER_BYTES);
  const version = d.getUint16(6);
  if (version !== 1) throw new BlockError("EINVAL", `Unsupported LUKS version ${version}`);
  const cipherMode = text(b, 40, 32);
  const dash = cipherMode.indexOf("-");
  const mode = dash < 0 ? cipherMode : cipherMode.slice(0, dash);
  const iv = dash < 0 ? "" : cipherMode.slice(dash + 1);
  const colon = iv.indexOf(":");
  const slots: LuksKeySlot[] = [];
  for (let i = 0; i < LUKS_SLOTS; i++) {
    const at = SLOT_AT + i * SLOT_BYTES;
    slots.push({
      active: d.getUint32(at) === LUKS_SLOT_ACTIVE,
      iterations: d.getUint32(at + 4),
      salt: b.slice(at + 8, at + 8 + LUKS_SALT_BYTES),
      keyOffset: d.getUint32(at + 40),
      stripes: d.getUint32(at + 44),
    });
  }
  const header: LuksHeader = {
    cipherName: text(b, 8, 32),
    cipherMode,
    mode,
    ivgen: colon < 0 ? iv : iv.slice(0, colon),
    ...(colon < 0 ? {} : { ivHash: iv.slice(colon + 1) }),
    hashSpec: text(b, 72, 32),
    payloadOffset: d.getUint32(104),
    keyBytes: d.getUint32(108),
    mkDigest: b.slice(112, 112 + LUKS_DIGEST_BYTES),
    mkSalt: b.slice(132, 132 + LUKS_SALT_BYTES),
    mkIterations: d.getUint32(164),
    uuid: text(b, 168, 40),
    slots,
  };
  return header;
}

/** Writes `value` as NUL-padded ASCII of `len` bytes at `at`. */
function setText(b: Uint8Array, at: number, len: number, value: string): void {
  if (value.length >= len) throw new BlockError("EINVAL", `LUKS header field '${value}' too long`);
  for (let i = 0; i < value.length; i++) b[at + i] = value.charCodeAt(i);
}

/** The {@link LUKS_HEADER_BYTES} of header `h` (LUKS version 1), as {@link parseLuksHeader} reads them. */
export function serializeLuksHeader(h: LuksHeader): Uint8Array {
  const b = new Uint8Array(LUKS_HEADER_BYTES);
  const d = new DataView(b.buffer);
  b.set(LUKS_MAGIC, 0);
  d.setUint16(6, 1);
  setText(b, 8, 32, h.cipherName);
  setText(b, 40, 32, h.cipherMode);
  setText(b, 72, 32, h.hashSpec);
  d.setUint32(104, h.payloadOffset);
  d.setUint32(108, h.keyBytes);
  b.set(h.mkDigest.subarray(0, LUKS_DIGEST_BYTES), 112);
  b.set(h.mkSalt.subarray(0, LUKS_SALT_BYTES), 132);
  d.setUint32(164, h.mkIterations);
  setText(b, 168, 40, h.uuid);
  h.slots.forEach((s, i) => {
    const at = SLOT_AT + i * SLOT_BYTES;
    d.setUint32(at, s.active ? LUKS_SLOT_ACTIVE : LUKS_SLOT_INACTIVE);
    d.setUint32(at + 4, s.iterations);
    b.set(s.salt.subarray(0, LUKS_SALT_BYTES), at + 8);
    d.setUint32(at + 40, s.keyOffset);
    d.setUint32(at + 44, s.stripes);
  });
  return b;
}

/**
 * The cipher a header names, checked as QEMU checks it before any key is tried: the mode and
 * IV generator known, the key length one the cipher takes, each active slot's stripes 4000
 * and its key material inside the header area ("Keyslot N is corrupted ..." otherwise).
 */
export function luksCipher(
  h: LuksHeader,
): { alg: string; mode: CipherMode; ivgen: IvGenAlg; ivHash?: string } {
  const mode = h.mode;
  if (mode !== "xts" && mode !== "cbc" && mode !== "ecb") {
    throw new BlockError("ENOTSUP", `Cipher mode '${mode}' is not supported`);
  }
  const ivgen = h.ivgen === "" ? "plain64" : h.ivgen;
  if (ivgen !== "plain" && ivgen !== "plain64" && ivgen !== "essiv") {
    throw new BlockError("ENOTSUP", `IV generator '${h.ivgen}' is not supported`);
  }
  if (h.cipherName !== "aes") {
    throw new BlockError(
      "ENOTSUP",
      `Cipher '${h.cipherName}' is not supported (blockgraph decrypts AES only)`,
    );
  }
  const each = mode === "xts" ? h.keyBytes / 2 : h.keyBytes;
  if (each !== 16 && each !== 24 && each !== 32) {
    throw new BlockError("EINVAL", `Invalid key length ${h.keyBytes} for cipher ${h.cipherName}`);
  }
  const splitBytes = h.keyBytes * LUKS_STRIPES;
  h.slots.forEach((s, i) => {
    if (!s.active) return;
    if (s.stripes !== LUKS_STRIPES) {
      throw new BlockError(
        "EINVAL",
        `Keyslot ${i} is corrupted (stripes ${s.stripes} != ${LUKS_STRIPES})`,
      );
    }
    if (s.keyOffset * 512 < LUKS_HEADER_BYTES) {
      throw new BlockError("EINVAL", `Keyslot ${i} is overlapping with the LUKS header`);
    }
    if (h.payloadOffset !== 0 && s.keyOffset * 512 + splitBytes > h.payloadOffset * 512) {
      throw new BlockError("EINVAL", `Keyslot ${i} is overlapping with the encrypted payload`);
    }
  });
  return { alg: "aes", mode, ivgen, ...(h.ivHash === undefined ? {} : { ivHash: h.ivHash }) };
}
