import { deepStrictEqual as assertEquals, rejects as assertRejects } from "node:assert";
import { pbkdf2Sync } from "node:crypto";
import { afSplit } from "./af_split.ts";
import { LUKS_SLOT_ACTIVE, LUKS_STRIPES, parseLuksHeader } from "./luks_header.ts";
import { unlockLuks } from "./luks_unlock.ts";
import { loadNodeCrypto } from "./node_crypto.ts";
import { SectorCipher } from "./sector_cipher.ts";

/**
 * A LUKS volume made as the specification says (slot 1 holds the key; aes cbc-essiv:sha256,
 * 32-byte key): its bytes, and the master key.
 */
async function volume(password: string): Promise<{ bytes: Uint8Array; mk: Uint8Array }> {
  await loadNodeCrypto();
  const keyBytes = 32;
  const mk = crypto.getRandomValues(new Uint8Array(keyBytes));
  const bytes = new Uint8Array(8 * 512 + keyBytes * LUKS_STRIPES);
  const v = new DataView(bytes.buffer);
  bytes.set([0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe]);
  v.setUint16(6, 1);
  const put = (at: number, s: string) => bytes.set(new TextEncoder().encode(s), at);
  put(8, "aes");
  put(40, "cbc-essiv:sha256");
  put(72, "sha256");
  v.setUint32(108, keyBytes);
  const mkSalt = crypto.getRandomValues(new Uint8Array(32));
  bytes.set(mkSalt, 132);
  v.setUint32(164, 1000);
  bytes.set(pbkdf2Sync(mk, mkSalt, 1000, 20, "sha256"), 112);
  const slot = 208 + 48;
  const salt = crypto.getRandomValues(new Uint8Array(32));
  v.setUint32(slot, LUKS_SLOT_ACTIVE);
  v.setUint32(slot + 4, 1000);
  bytes.set(salt, slot + 8);
  v.setUint32(slot + 40, 8);
  v.setUint32(slot + 44, LUKS_STRIPES);
  const split = afSplit("sha256", mk, LUKS_STRIPES);
  const slotKey = pbkdf2Sync(new TextEncoder().encode(password), salt, 1000, keyBytes, "sha256");
  new SectorCipher({ alg: "aes", mode: "cbc", ivgen: "essiv", ivHash: "sha256", key: slotKey })
    .encrypt(split, 0);
  bytes.set(split, 8 * 512);
  return { bytes, mk };
}

Deno.test("a LUKS volume unlocks with its password, and not with another", async () => {
  const { bytes, mk } = await volume("right");
  const h = parseLuksHeader(bytes);
  const read = (o: number, n: number) => Promise.resolve(bytes.slice(o, o + n));
  const data = crypto.getRandomValues(new Uint8Array(1024));
  const want = data.slice();
  new SectorCipher({ alg: "aes", mode: "cbc", ivgen: "essiv", ivHash: "sha256", key: mk })
    .encrypt(data, 77);
  const { cipher } = await unlockLuks(h, new TextEncoder().encode("right"), read);
  cipher.decrypt(data, 77);
  assertEquals(data, want);
  await assertRejects(
    unlockLuks(h, new TextEncoder().encode("wrong"), read),
    /Invalid password, cannot unlock any keyslot/,
  );
});
