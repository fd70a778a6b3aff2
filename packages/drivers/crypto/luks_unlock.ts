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
import {
  LUKS_DIGEST_BYTES,
  luksCipher,
  type LuksHeader,
  luksMaterialBytes,
} from "./luks_header.ts";
import { loadNodeCrypto } from "./node_crypto.ts";
import { pbkdf2 } from "./pbkdf2.ts";
import { CRYPT_SECTOR, SectorCipher } from "./sector_cipher.ts";

function equal(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i]! ^ b[i]!;
  return diff === 0;
}

/** Reads a volume's bytes: `bytes` from `offset`, counted from the start of its header. */
export type LuksRead = (offset: number, bytes: number) => Promise<Uint8Array>;

/**
 * The master key that key slot `index` of volume `h` holds for `password`, or null when the
 * password is not the slot's (or the slot is inactive).
 */
export async function openKeyslot(
  h: LuksHeader,
  index: number,
  password: Uint8Array,
  read: LuksRead,
): Promise<Uint8Array | null> {
  const slot = h.slots[index];
  if (!slot?.active) return null;
  const spec = luksCipher(h);
  await loadNodeCrypto();
  const slotKey = await pbkdf2(h.hashSpec, password, slot.salt, slot.iterations, h.keyBytes);
  const material = await read(slot.keyOffset * CRYPT_SECTOR, luksMaterialBytes(h));
  new SectorCipher({ ...spec, key: slotKey }).decrypt(material, 0);
  const candidate = afMerge(h.hashSpec, h.keyBytes, slot.stripes, material);
  const digest = await pbkdf2(h.hashSpec, candidate, h.mkSalt, h.mkIterations, LUKS_DIGEST_BYTES);
  return equal(digest, h.mkDigest) ? candidate : null;
}

/** An unlocked volume. */
export interface UnlockedLuks {
  /** The payload cipher. */
  readonly cipher: SectorCipher;
  /** The master key (to add key slots). */
  readonly masterKey: Uint8Array;
}

/**
 * The payload cipher of the volume `h` describes, unlocked with `password`; `read` reads the
 * volume. A password no slot takes: EACCES with QEMU's "Invalid password, cannot unlock any
 * keyslot".
 */
export async function unlockLuks(
  h: LuksHeader,
  password: Uint8Array,
  read: LuksRead,
): Promise<UnlockedLuks> {
  const spec = luksCipher(h);
  for (let i = 0; i < h.slots.length; i++) {
    const masterKey = await openKeyslot(h, i, password, read);
    if (masterKey) return { cipher: new SectorCipher({ ...spec, key: masterKey }), masterKey };
  }
  throw new BlockError("EACCES", "Invalid password, cannot unlock any keyslot");
}
