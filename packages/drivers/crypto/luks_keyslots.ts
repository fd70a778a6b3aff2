/**
 * LUKS key slots: filling one with the master key for a password (a new volume's slot 0,
 * or a password added later), and QEMU's key slot management (`qemu-img amend -o
 * encrypt.state=active|inactive,...`, QEMU's `qcrypto_block_luks_amend_options`): adding a
 * password to a free slot (or a given one), and erasing the slots a password opens (or a
 * given one), with QEMU's checks, in its order, with its messages. An erased slot's material
 * is overwritten with random bytes before the header marks it inactive.
 *
 * @module
 */

import { BlockError } from "@blockgraph/core";
import { afSplit } from "./af_split.ts";
import {
  LUKS_SALT_BYTES,
  LUKS_SLOTS,
  LUKS_STRIPES,
  luksCipher,
  type LuksHeader,
  type LuksKeySlot,
  luksMaterialBytes,
  serializeLuksHeader,
} from "./luks_header.ts";
import { type LuksRead, openKeyslot } from "./luks_unlock.ts";
import { loadNodeCrypto } from "./node_crypto.ts";
import { hashDigestBytes, pbkdf2, pbkdf2Rate } from "./pbkdf2.ts";
import { CRYPT_SECTOR, SectorCipher } from "./sector_cipher.ts";

/** QEMU's lower bound of iteration counts. */
const MIN_ITERATIONS = 1000;
/** QEMU's default `iter-time`, in milliseconds. */
export const DEFAULT_ITER_TIME = 2000;

/**
 * PBKDF2 iterations that take `ms` milliseconds for `bytes` of output with `hash`, at
 * `perBlock` iterations a second per digest-sized block (`pbkdf2Rate`), divided by `divisor`;
 * at least 1000.
 */
export function luksIterations(
  perBlock: number,
  hash: string,
  bytes: number,
  ms: number,
  divisor = 1,
): number {
  const perSecond = perBlock / Math.ceil(bytes / hashDigestBytes(hash));
  const n = Math.floor((perSecond * ms) / 1000 / divisor);
  if (n > 0xffffffff) throw new BlockError("EINVAL", "Too many pbkdf iterations for LUKS format");
  return Math.max(n, MIN_ITERATIONS);
}

/** `bytes` random bytes (from the system's generator, 64 KiB at a time as it allows). */
export function randomBytes(bytes: number): Uint8Array {
  const b = new Uint8Array(bytes);
  for (let at = 0; at < bytes; at += 65536) {
    crypto.getRandomValues(b.subarray(at, Math.min(at + 65536, bytes)));
  }
  return b;
}

/**
 * Key slot `index` of volume `h` filled with `masterKey` for `password`, with `iterations`:
 * the slot, and its material (split and encrypted) to write at its key offset.
 */
export async function fillKeyslot(
  h: LuksHeader,
  index: number,
  masterKey: Uint8Array,
  password: Uint8Array,
  iterations: number,
): Promise<{ slot: LuksKeySlot; material: Uint8Array }> {
  const spec = luksCipher(h);
  await loadNodeCrypto();
  const salt = randomBytes(LUKS_SALT_BYTES);
  const key = await pbkdf2(h.hashSpec, password, salt, iterations, h.keyBytes);
  const material = new Uint8Array(luksMaterialBytes(h));
  material.set(afSplit(h.hashSpec, masterKey, LUKS_STRIPES));
  new SectorCipher({ ...spec, key }).encrypt(material, 0);
  const old = h.slots[index]!;
  const slot = { active: true, iterations, salt, keyOffset: old.keyOffset, stripes: LUKS_STRIPES };
  return { slot, material };
}

/** A key slot change: QEMU's LUKS amend options. */
export interface KeyslotChange {
  /** Add a password (`active`) or erase slots (`inactive`). */
  readonly state: "active" | "inactive";
  /** The slot to change; by default the first free one (adding) or those `oldSecret` opens. */
  readonly keyslot?: number | undefined;
  /** The secret whose password is added. */
  readonly newSecret?: string | undefined;
  /** The secret whose password's slots are erased. */
  readonly oldSecret?: string | undefined;
  /** Milliseconds the new slot's PBKDF2 should take (default 2000). */
  readonly iterTime?: number | undefined;
}

/** An unlocked volume whose key slots change. */
export interface LuksVolume {
  /** Its header. */
  readonly header: LuksHeader;
  /** Its master key. */
  readonly masterKey: Uint8Array;
  /** Reads the volume from the start of its header. */
  readonly read: LuksRead;
  /** Writes `data` at `offset` from the start of its header. */
  readonly write: (offset: number, data: Uint8Array) => Promise<void>;
  /** Makes what was written stable. */
  readonly flush: () => Promise<void>;
}

function einval(message: string): never {
  throw new BlockError("EINVAL", message);
}

function checkIndex(keyslot: number | undefined): void {
  if (keyslot !== undefined && !(keyslot >= 0 && keyslot < LUKS_SLOTS)) {
    einval(`Invalid keyslot ${keyslot} specified, must be between 0 and ${LUKS_SLOTS - 1}`);
  }
}

/** Writes slot material, then (once it is stable) the header with `slots`: the new header. */
async function commit(
  v: LuksVolume,
  slots: readonly LuksKeySlot[],
  material: { offset: number; data: Uint8Array }[],
): Promise<LuksHeader> {
  for (const m of material) await v.write(m.offset, m.data);
  await v.flush();
  const header = { ...v.header, slots };
  await v.write(0, serializeLuksHeader(header));
  await v.flush();
  return header;
}

/**
 * Changes the key slots of `v` as `change` says (`force`: overwrite an active slot, erase
 * the last one), reading passwords through `password` (a secret's id); returns the new
 * header. Refusals come in QEMU's order with its messages, before anything is written.
 */
export async function changeKeyslots(
  v: LuksVolume,
  change: KeyslotChange,
  force: boolean,
  password: (secretId: string) => Promise<Uint8Array>,
): Promise<LuksHeader> {
  const h = v.header;
  const slots = [...h.slots];
  const { keyslot } = change;
  if (change.state === "active") {
    if (change.newSecret === undefined) einval("'new-secret' is required to activate a keyslot");
    if (change.oldSecret !== undefined) {
      einval("'old-secret' must not be given when activating keyslots");
    }
    checkIndex(keyslot);
    const index = keyslot ?? slots.findIndex((s) => !s.active);
    if (index < 0) einval("Can't add a keyslot - all keyslots are in use");
    if (!force && slots[index]!.active) {
      einval(`Refusing to overwrite active keyslot ${index} - please erase it first`);
    }
    const secret = await password(change.newSecret);
    const perBlock = await pbkdf2Rate(h.hashSpec);
    const ms = change.iterTime ?? DEFAULT_ITER_TIME;
    const iterations = luksIterations(perBlock, h.hashSpec, h.keyBytes, ms);
    const filled = await fillKeyslot(h, index, v.masterKey, secret, iterations);
    slots[index] = filled.slot;
    const offset = filled.slot.keyOffset * CRYPT_SECTOR;
    return await commit(v, slots, [{ offset, data: filled.material }]);
  }
  if (change.newSecret !== undefined) {
    einval("'new-secret' must not be given when erasing keyslots");
  }
  checkIndex(keyslot);
  const old = change.oldSecret === undefined ? undefined : await password(change.oldSecret);
  const active = slots.filter((s) => s.active).length;
  let erase: number[];
  if (keyslot !== undefined) {
    if (!slots[keyslot]!.active) einval(`Given keyslot ${keyslot} is already erased (inactive) `);
    if (old !== undefined && !(await openKeyslot(h, keyslot, old, v.read))) {
      einval(`Given keyslot ${keyslot} doesn't contain the given old password for erase operation`);
    }
    if (!force && active === 1) {
      einval(
        `Attempt to erase the only active keyslot ${keyslot} which will erase all the data in ` +
          "the image irreversibly - refusing operation",
      );
    }
    erase = [keyslot];
  } else if (old !== undefined) {
    erase = [];
    for (let i = 0; i < slots.length; i++) {
      if (await openKeyslot(h, i, old, v.read)) erase.push(i);
    }
    if (erase.length === 0) einval("No keyslots match given (old) password for erase operation");
    if (!force && erase.length === active) {
      einval(
        "All the active keyslots match the (old) password that was given and erasing them " +
          "will erase all the data in the image irreversibly - refusing operation",
      );
    }
  } else {
    einval(
      "To erase keyslot(s), either explicit keyslot index or the password currently contained " +
        "in them must be given",
    );
  }
  const wiped = erase.map((i) => {
    const s = slots[i]!;
    slots[i] = { ...s, active: false, iterations: 0, salt: new Uint8Array(LUKS_SALT_BYTES) };
    return { offset: s.keyOffset * CRYPT_SECTOR, data: randomBytes(luksMaterialBytes(h)) };
  });
  return await commit(v, slots, wiped);
}
