/**
 * What `img info` shows of an encrypted qcow2 image (QEMU's `QCryptoBlockInfo` under the
 * format-specific `encrypt`): `{format: "aes"}` for the old AES method, and for LUKS the
 * header's cipher, modes, hash, key slots and payload offset, read from the LUKS header the
 * "full disk encryption header pointer" extension names.
 *
 * Nothing here needs a key: the LUKS header is plain text apart from its key material, and
 * `qemu-img info` shows an encrypted image without one (`NodeFlags.noIo`). Decrypting is
 * `encryption.ts`'s.
 *
 * @module
 */

import { BlockError, type FormatSpecificInfo, type Node } from "@blockgraph/core";
import { LUKS_HEADER_BYTES, parseLuksHeader } from "../../crypto/luks_header.ts";
import { CRYPT_SECTOR } from "../../crypto/sector_cipher.ts";
import { luksHeaderRegion } from "./encryption.ts";
import type { Qcow2Header } from "./header.ts";

/** QEMU's cipher names for LUKS's (`qcrypto_block_luks_cipher_name_lookup`), by key bytes. */
function cipherAlg(name: string, keyBytes: number): string {
  const bits = keyBytes * 8;
  if (name === "aes" || name === "serpent" || name === "twofish") return `${name}-${bits}`;
  if (name === "cast5") return "cast5-128";
  if (name === "des3_ede") return "3des";
  return name;
}

/**
 * The `encrypt` facts of an image with crypt method `h.cryptMethod` (1 AES, 2 LUKS), reading
 * the LUKS header through `file`. A LUKS header that is missing, outside the file or not
 * LUKS is refused with the structure and offset named.
 */
export async function readEncryptionInfo(file: Node, h: Qcow2Header): Promise<FormatSpecificInfo> {
  if (h.cryptMethod === 1) return { format: "aes" };
  if (h.cryptMethod !== 2) {
    throw new BlockError("EINVAL", `qcow2: invalid encryption method ${h.cryptMethod}`);
  }
  const { offset, length } = luksHeaderRegion(h);
  if (length < LUKS_HEADER_BYTES || offset + LUKS_HEADER_BYTES > file.getLength()) {
    throw new BlockError(
      "EINVAL",
      `qcow2: the LUKS header at offset ${offset} (${length} bytes) is outside the image file`,
    );
  }
  const b = new Uint8Array(LUKS_HEADER_BYTES);
  await file.read(offset, b);
  const l = parseLuksHeader(b);
  const info: FormatSpecificInfo = {
    format: "luks",
    "cipher-alg": cipherAlg(l.cipherName, l.mode === "xts" ? l.keyBytes / 2 : l.keyBytes),
    "cipher-mode": l.mode,
    "ivgen-alg": l.ivgen,
  };
  if (l.ivHash !== undefined) info["ivgen-hash-alg"] = l.ivHash;
  info["hash-alg"] = l.hashSpec;
  info["payload-offset"] = l.payloadOffset * CRYPT_SECTOR;
  info["master-key-iters"] = l.mkIterations;
  info.uuid = l.uuid;
  info.slots = l.slots.map((s) => {
    const slot: FormatSpecificInfo = { active: s.active };
    if (s.active) {
      slot.iters = s.iterations;
      slot.stripes = s.stripes;
    }
    slot["key-offset"] = s.keyOffset * CRYPT_SECTOR;
    return slot;
  });
  return info;
}
