/**
 * What `img info` shows of an encrypted qcow2 image (QEMU's `QCryptoBlockInfo` under the
 * format-specific `encrypt`): `{format: "aes"}` for the old AES method, and for LUKS the
 * header's cipher, modes, hash, key slots and payload offset, from the LUKS header the
 * "full disk encryption header pointer" extension names (`encryption.ts` reads it).
 *
 * Nothing here needs a key: the LUKS header is plain text apart from its key material, and
 * `qemu-img info` shows an encrypted image without one (`NodeFlags.noIo`). Decrypting is
 * `encryption.ts`'s.
 *
 * @module
 */

import type { FormatSpecificInfo } from "@blockgraph/core";
import type { LuksHeader } from "../../crypto/luks_header.ts";
import { CRYPT_SECTOR } from "../../crypto/sector_cipher.ts";

/** QEMU's cipher names for LUKS's (`qcrypto_block_luks_cipher_name_lookup`), by key bytes. */
function cipherAlg(name: string, keyBytes: number): string {
  const bits = keyBytes * 8;
  if (name === "aes" || name === "serpent" || name === "twofish") return `${name}-${bits}`;
  if (name === "cast5") return "cast5-128";
  if (name === "des3_ede") return "3des";
  return name;
}

/**
 * The `encrypt` facts of an encrypted image: `{format: "aes"}` for the old AES method (no
 * LUKS header), else those of its LUKS header.
 */
export function encryptionInfo(l: LuksHeader | null): FormatSpecificInfo {
  if (l === null) return { format: "aes" };
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
