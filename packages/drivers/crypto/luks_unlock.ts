/**
 * Unlocking a LUKS 1 volume with a password: for each active key slot, the password's PBKDF2
 * (the header's hash, the slot's salt and iterations) is the key that decrypts the slot's key
 * material (the volume's cipher, sectors numbered from 0); the material merges (`af_split.ts`)
 * into a candidate master key, which is the master key when its own PBKDF2 matches the
 * header's digest. The payload cipher is then the volume's cipher keyed with it.
 *
 * The key derivations run off the JavaScript thread (`pbkdf2.ts`): a slot QEMU wrote with its
 * default `iter-time` of 2 s costs about that long to try, and the event loop goes on
 * meanwhile.
 *
 * @module
 */

import { BlockError } from "@blockgraph/core";
import { afMerge } from "./af_split.ts";
import { LUKS_DIGEST_BYTES, luksCipher, type LuksHeader } from "./luks_header.ts";
import { loadNodeCrypto } from "./node_crypto.ts";
import { pbkdf2 } from "./pbkdf2.ts";
import { CRYPT_SECTOR, SectorCipher } from "./sector_cipher.ts";

function equal(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i]! ^ b[i]!;
  return diff === 0;
}

/**
 * The payload cipher of the volume `h` describes, unlocked with `password`; `read(offset,
 * bytes)` reads the volume's bytes from the start of its header. A password no slot takes:
 * EACCES with QEMU's "Invalid password, cannot unlock any keyslot".
 */
export async function unlockLuks(
  h: LuksHeader,
  password: Uint8Array,
  read: (offset: number, bytes: number) => Promise<Uint8Array>,
): Promise<SectorCipher> {
  const spec = luksCipher(h);
  await loadNodeCrypto();
  const splitBytes = h.keyBytes * (h.slots.find((s) => s.active)?.stripes ?? 0);
  const materialBytes = Math.ceil(splitBytes / CRYPT_SECTOR) * CRYPT_SECTOR;
  for (const slot of h.slots) {
    if (!slot.active) continue;
    const slotKey = await pbkdf2(h.hashSpec, password, slot.salt, slot.iterations, h.keyBytes);
    const material = await read(slot.keyOffset * CRYPT_SECTOR, materialBytes);
    new SectorCipher({ ...spec, key: slotKey }).decrypt(material, 0);
    const candidate = afMerge(h.hashSpec, h.keyBytes, slot.stripes, material);
    const digest = await pbkdf2(h.hashSpec, candidate, h.mkSalt, h.mkIterations, LUKS_DIGEST_BYTES);
    if (equal(digest, h.mkDigest)) return new SectorCipher({ ...spec, key: candidate });
  }
  throw new BlockError("EACCES", "Invalid password, cannot unlock any keyslot");
}
