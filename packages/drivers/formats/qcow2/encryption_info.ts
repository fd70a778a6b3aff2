/**
 * What `img info` shows of an encrypted qcow2 image (QEMU's `QCryptoBlockInfo` under the
 * format-specific `encrypt`): `{format: "aes"}` for the old AES method, and for LUKS the
 * header's cipher, modes, hash, key slots and payload offset, read from the LUKS header the
 * "full disk encryption header pointer" extension names.
 *
 * blockgraph does not decrypt: an encrypted image opens only for its metadata
 * (`NodeFlags.noIo`, as `qemu-img info` opens it), and its data is never read. Nothing here
 * needs a key; the LUKS header is plain text apart from its key material.
 *
 * @module
 */

import { BlockError, type FormatSpecificInfo, type Node } from "@blockgraph/core";
import { Ext } from "./format.ts";
import type { Qcow2Header } from "./header.ts";

/** LUKS's on-disk layout (big-endian): the header, then eight 48-byte key slots. */
const LUKS_MAGIC = [0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe];
const LUKS_HEADER_BYTES = 592;
const SLOT_AT = 208;
const SLOT_BYTES = 48;
const SLOTS = 8;
const SECTOR = 512;
const SLOT_ACTIVE = 0x00ac71f3;

/** QEMU's cipher names for LUKS's (`qcrypto_block_luks_cipher_name_lookup`), by key bytes. */
function cipherAlg(name: string, keyBytes: number): string {
  const bits = keyBytes * 8;
  if (name === "aes" || name === "serpent" || name === "twofish") return `${name}-${bits}`;
  if (name === "cast5") return "cast5-128";
  if (name === "des3_ede") return "3des";
  return name;
}

/** NUL-terminated ASCII at `at`, `len` bytes at most. */
function text(b: Uint8Array, at: number, len: number): string {
  let s = "";
  for (let i = at; i < at + len && b[i] !== 0; i++) s += String.fromCharCode(b[i]!);
  return s;
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
  const ext = h.extensions.find((e) => e.type === Ext.CRYPTO_HEADER);
  if (!ext || ext.data.length < 16) {
    throw new BlockError("EINVAL", "qcow2: LUKS encryption without a crypto header extension");
  }
  const v = new DataView(ext.data.buffer, ext.data.byteOffset, ext.data.length);
  const offset = Number(v.getBigUint64(0));
  const length = Number(v.getBigUint64(8));
  if (length < LUKS_HEADER_BYTES || offset + LUKS_HEADER_BYTES > file.getLength()) {
    throw new BlockError(
      "EINVAL",
      `qcow2: the LUKS header at offset ${offset} (${length} bytes) is outside the image file`,
    );
  }
  const b = new Uint8Array(LUKS_HEADER_BYTES);
  await file.read(offset, b);
  if (!LUKS_MAGIC.every((m, i) => b[i] === m)) {
    throw new BlockError("EINVAL", "Volume is not in LUKS format");
  }
  const d = new DataView(b.buffer);
  // "xts-plain64", "cbc-essiv:sha256": the mode, the IV generator and its hash.
  const [mode = "", ivgen = ""] = text(b, 40, 32).split("-");
  const [ivgenAlg = "", ivgenHash] = ivgen.split(":");
  const keyBytes = d.getUint32(108);
  const info: FormatSpecificInfo = {
    format: "luks",
    "cipher-alg": cipherAlg(text(b, 8, 32), mode === "xts" ? keyBytes / 2 : keyBytes),
    "cipher-mode": mode,
    "ivgen-alg": ivgenAlg,
  };
  if (ivgenHash !== undefined) info["ivgen-hash-alg"] = ivgenHash;
  info["hash-alg"] = text(b, 72, 32);
  info["payload-offset"] = d.getUint32(104) * SECTOR;
  info["master-key-iters"] = d.getUint32(164);
  info.uuid = text(b, 168, 40);
  const slots: FormatSpecificInfo[] = [];
  for (let i = 0; i < SLOTS; i++) {
    const at = SLOT_AT + i * SLOT_BYTES;
    const active = d.getUint32(at) === SLOT_ACTIVE;
    const slot: FormatSpecificInfo = { active };
    if (active) {
      slot.iters = d.getUint32(at + 4);
      slot.stripes = d.getUint32(at + 44);
    }
    slot["key-offset"] = d.getUint32(at + 40) * SECTOR;
    slots.push(slot);
  }
  info.slots = slots;
  return info;
}
