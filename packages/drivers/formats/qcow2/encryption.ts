/**
 * The encryption of a qcow2 image's data, set up at open: the `encrypt.format` and
 * `encrypt.key-secret` runtime options checked against the header as QEMU 7.2's
 * `qcow2_update_options_prepare` and `qcrypto_block_open` check them (with their messages),
 * then the key:
 *
 * - LUKS (crypt method 2): the LUKS header the "full disk encryption header pointer" extension
 *   names is unlocked with the secret's password (`crypto/luks_unlock.ts`). Sectors are
 *   numbered by their offset in the image file (QEMU's `crypt_physical_offset`), so a cluster's
 *   data decrypts wherever a guest offset maps it.
 * - The old AES method (crypt method 1): AES-128-CBC whose key is the password's first 16
 *   bytes (zero-padded), sectors numbered by guest offset.
 *
 * An image opened for its metadata only (`NodeFlags.noIo`, `img info`) needs no key. Writes
 * (LUKS only) are encrypted on their way to the data file (`Qcow2Image.writeData`, the one
 * place guest data is written), sectors numbered by host offset as reads number them; the
 * old AES method, which QEMU keeps for reading old images, opens read-only.
 *
 * @module
 */

import { BlockError, type IoVector, type Node, type OptionValues } from "@blockgraph/core";
import { LUKS_HEADER_BYTES, type LuksHeader, parseLuksHeader } from "../../crypto/luks_header.ts";
import { changeKeyslots, type KeyslotChange } from "../../crypto/luks_keyslots.ts";
import { type LuksRead, unlockLuks } from "../../crypto/luks_unlock.ts";
import { loadNodeCrypto } from "../../crypto/node_crypto.ts";
import { secretPassword } from "../../crypto/secret.ts";
import { CRYPT_SECTOR, SectorCipher } from "../../crypto/sector_cipher.ts";
import { Ext } from "./format.ts";
import type { Qcow2Header } from "./header.ts";
import type { Qcow2Image } from "./image.ts";
import { encryptionInfo } from "./encryption_info.ts";

/** An open image's data cipher. */
export interface Qcow2Crypto {
  /** Decrypts and encrypts whole sectors. */
  readonly cipher: SectorCipher;
  /** Sectors are numbered by host offset (LUKS), else by guest offset (AES). */
  readonly physical: boolean;
  /** LUKS: the header's region and the master key (for key slot changes). */
  luks?: { region: LuksRegion; readonly masterKey: Uint8Array };
}

/** The header's method as `encrypt.format` names it. */
const FORMATS: Readonly<Record<number, string>> = { 1: "aes", 2: "luks" };

/** Where the LUKS header of `h` lies in the file: the crypto header extension's offset and length. */
export function luksHeaderRegion(h: Qcow2Header): { offset: number; length: number } {
  const ext = h.extensions.find((e) => e.type === Ext.CRYPTO_HEADER);
  if (!ext || ext.data.length < 16) {
    throw new BlockError("EINVAL", "qcow2: LUKS encryption without a crypto header extension");
  }
  const v = new DataView(ext.data.buffer, ext.data.byteOffset, ext.data.length);
  return { offset: Number(v.getBigUint64(0)), length: Number(v.getBigUint64(8)) };
}

/** A LUKS image's LUKS header and the region of the file it heads. */
export interface LuksRegion {
  /** Where the region starts in the image file. */
  readonly offset: number;
  /** Its length (the crypto header extension's). */
  readonly length: number;
  /** The parsed header. */
  readonly header: LuksHeader;
}

/**
 * The LUKS header of a LUKS image (crypt method 2), read through `file`; null for the old AES
 * method. One missing, outside the file or not LUKS is refused with the structure and offset
 * named ("Volume is not in LUKS format" as QEMU).
 */
export async function readLuksHeader(file: Node, h: Qcow2Header): Promise<LuksRegion | null> {
  if (h.cryptMethod !== 2) return null;
  const { offset, length } = luksHeaderRegion(h);
  if (length < LUKS_HEADER_BYTES || offset + LUKS_HEADER_BYTES > file.getLength()) {
    throw new BlockError(
      "EINVAL",
      `qcow2: the LUKS header at offset ${offset} (${length} bytes) is outside the image file`,
    );
  }
  const b = new Uint8Array(LUKS_HEADER_BYTES);
  await file.read(offset, b);
  return { offset, length, header: parseLuksHeader(b) };
}

/**
 * Checks `encrypt.format` against the header (QEMU's order and messages), for every open,
 * metadata-only ones included.
 */
export function checkEncryptOptions(h: Qcow2Header, options: OptionValues): void {
  const fmt = options["encrypt.format"] as string | undefined;
  const method = h.cryptMethod;
  if (method === 0) {
    if (fmt !== undefined) {
      throw new BlockError(
        "EINVAL",
        `No encryption in image header, but options specified format '${fmt}'`,
      );
    }
    return;
  }
  const name = FORMATS[method];
  if (name === undefined) {
    throw new BlockError("EINVAL", `Unsupported encryption method ${method}`);
  }
  if (fmt !== undefined && fmt !== name) {
    throw new BlockError(
      "EINVAL",
      `Header reported '${name}' encryption format but options specify '${fmt}'`,
    );
  }
}

/** How an encrypted image is opened for its data. */
export interface EncryptionOpen {
  /** The image file (where the LUKS header is). */
  readonly file: Node;
  /** Its LUKS header ({@link readLuksHeader}); null for the old AES method. */
  readonly luks: LuksRegion | null;
  /** The node's options (`encrypt.key-secret`). */
  readonly options: OptionValues;
  /** Opened read/write. */
  readonly writable: boolean;
  /** The image has an external data file. */
  readonly dataFile: boolean;
}

/** Reads the LUKS region of an image file, refusing what lies outside it. */
function luksReader(file: Node, region: LuksRegion): LuksRead {
  return async (offset, bytes) => {
    if (offset + bytes > region.length || region.offset + offset + bytes > file.getLength()) {
      throw new BlockError(
        "EINVAL",
        `qcow2: LUKS key material at offset ${region.offset + offset} (${bytes} bytes) is ` +
          "outside the LUKS header area",
      );
    }
    const b = new Uint8Array(bytes);
    await file.read(region.offset + offset, b);
    return b;
  };
}

/**
 * The data cipher of an encrypted image opened for its data: the key from the secret
 * `encrypt.key-secret` names. Without that option: QEMU's "Parameter 'encrypt.key-secret' is
 * required for cipher"; a wrong password: "Invalid password, cannot unlock any keyslot". What
 * cannot be written is refused before the key is tried (a LUKS slot costs its PBKDF2 time).
 */
export async function openEncryption(node: Node, o: EncryptionOpen): Promise<Qcow2Crypto> {
  const secret = o.options["encrypt.key-secret"] as string | undefined;
  if (secret === undefined) {
    throw new BlockError("EINVAL", "Parameter 'encrypt.key-secret' is required for cipher");
  }
  if (o.writable && o.luks === null) {
    throw new BlockError(
      "ENOTSUP",
      "qcow2: writing images encrypted with the old AES method is not supported; open the " +
        "image read-only, or convert it to LUKS",
    );
  }
  if (o.writable && o.dataFile) {
    throw new BlockError(
      "ENOTSUP",
      "qcow2: writing an encrypted image with an external data file is not supported",
    );
  }
  const password = await secretPassword(node.graph.objects, secret);
  await loadNodeCrypto();
  if (o.luks === null) {
    const key = new Uint8Array(16);
    key.set(password.subarray(0, 16));
    return {
      cipher: new SectorCipher({ alg: "aes", mode: "cbc", ivgen: "plain64", key }),
      physical: false,
    };
  }
  const { file, luks: region } = o;
  const read = luksReader(file, region);
  const { cipher, masterKey } = await unlockLuks(region.header, password, read);
  return { cipher, physical: true, luks: { region, masterKey } };
}

/**
 * Refuses I/O on an encrypted image that it cannot take: any data when the image was opened
 * without its key (`crypto` null: metadata only), a compressed write (compressed clusters are
 * never encrypted, as in QEMU).
 */
export function checkEncryptedIo(
  crypto: Qcow2Crypto | null,
  compressed: boolean,
  offset: number,
): void {
  if (!crypto) {
    throw new BlockError(
      "ENOTSUP",
      "qcow2: the image was opened without its key (encrypt.key-secret): its data cannot be read",
      { offset },
    );
  }
  if (compressed) {
    throw new BlockError(
      "ENOTSUP",
      "Compressed writes are not supported in an encrypted image",
      { offset },
    );
  }
}

/**
 * Reads `bytes` of encrypted data at `host` in `data` (guest `guest`; whole sectors, the node's
 * alignment) into `qiov` at `qiovOffset`, decrypted in a buffer of its own.
 */
export async function readDecrypted(
  data: Node,
  crypto: Qcow2Crypto,
  host: number,
  guest: number,
  bytes: number,
  qiov: IoVector,
  qiovOffset: number,
): Promise<void> {
  const buf = new Uint8Array(bytes);
  await data.read(host, buf);
  crypto.cipher.decrypt(buf, (crypto.physical ? host : guest) / CRYPT_SECTOR);
  qiov.copyFrom(qiovOffset, buf, 0, bytes);
}

/**
 * Refuses preallocating (`mode` not `off`) an encrypted image of `version` 2: preallocated
 * clusters must read as zeros, which an encrypted cluster never written does not hold (it
 * decrypts to garbage); version 3 allocates them with the zero flag, version 2 has none.
 */
export function checkEncryptedPrealloc(encrypted: boolean, version: number, mode: string): void {
  if (encrypted && version < 3 && mode !== "off") {
    throw new BlockError(
      "ENOTSUP",
      "Preallocation of an encrypted image needs compat=1.1 (version 2 has no zero flag, " +
        "and preallocated clusters would read as garbage)",
    );
  }
}

/** The key slot options of `qemu-img amend` (after `encrypt.`), as QEMU's QAPI reads them. */
function keyslotChange(options: OptionValues): KeyslotChange {
  const get = (k: string) => options[`encrypt.${k}`];
  const state = get("state");
  if (state === undefined) throw new BlockError("EINVAL", "Parameter 'state' is missing");
  if (state !== "active" && state !== "inactive") {
    throw new BlockError("EINVAL", `Parameter 'state' does not accept value '${state}'`);
  }
  const num = (k: string) => {
    const v = get(k);
    if (v === undefined) return undefined;
    const n = Number(v);
    if (!Number.isInteger(n)) {
      throw new BlockError("EINVAL", `Parameter 'encrypt.${k}' expects a number`);
    }
    return n;
  };
  const str = (k: string) => get(k) === undefined ? undefined : String(get(k));
  return {
    state,
    keyslot: num("keyslot"),
    iterTime: num("iter-time"),
    newSecret: str("new-secret"),
    oldSecret: str("old-secret"),
  };
}

/**
 * Changes the key slots of `image` as the `encrypt.*` amend options say (QEMU 7.2's
 * `qcow2_amend_options` and `qcrypto_block_luks_amend_options`, with their messages): only on
 * a LUKS image opened with its key; `force` overwrites an active slot or erases the last one.
 */
export async function amendEncryption(
  image: Qcow2Image,
  options: OptionValues,
  force: boolean,
): Promise<void> {
  const luks = image.crypto?.luks;
  if (image.header.cryptMethod === 0 || !image.crypto) {
    throw new BlockError("EINVAL", "Can't amend encryption options - encryption not present");
  }
  if (!luks) throw new BlockError("ENOTSUP", "Only LUKS encryption options can be amended");
  const change = keyslotChange(options);
  const { region } = luks;
  const header = await changeKeyslots(
    {
      header: region.header,
      masterKey: luks.masterKey,
      read: luksReader(image.file, region),
      write: (offset, data) => image.write("crypto header", region.offset + offset, data),
      flush: () => image.flush(),
    },
    change,
    force,
    (id) => secretPassword(image.file.graph.objects, id),
  );
  luks.region = { ...region, header };
  image.encryption = encryptionInfo(header);
}
