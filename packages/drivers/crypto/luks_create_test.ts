import { deepStrictEqual as assertEquals, rejects as assertRejects } from "node:assert";
import { createLuks } from "./luks_create.ts";
import { luksPayloadOffset, parseLuksHeader, serializeLuksHeader } from "./luks_header.ts";
import { unlockLuks } from "./luks_unlock.ts";
import { CRYPT_SECTOR } from "./sector_cipher.ts";

const enc = (s: string) => new TextEncoder().encode(s);

/** Unlocks a new volume's region with `password`: the data cipher. */
function unlock(region: Uint8Array, password: string) {
  const header = parseLuksHeader(region);
  return unlockLuks(header, enc(password), (at, n) => Promise.resolve(region.slice(at, at + n)));
}

for (
  const [alg, mode, ivgen] of [
    ["aes-256", "xts", "plain64"],
    ["aes-192", "xts", "plain64"],
    ["aes-128", "cbc", "essiv"],
    ["aes-128", "ecb", "plain"],
  ] as const
) {
  Deno.test(`createLuks: ${alg}-${mode}-${ivgen} opens with its password, not another`, async () => {
    const o = { cipherAlg: alg, cipherMode: mode, ivgenAlg: ivgen, iterTime: 5 };
    const { header, region } = await createLuks(o, enc("secret"));
    const keyBytes = (Number(alg.slice(4)) / 8) * (mode === "xts" ? 2 : 1);
    assertEquals(region.length, luksPayloadOffset(keyBytes));
    assertEquals(header.payloadOffset * CRYPT_SECTOR, region.length);
    assertEquals(
      header.cipherMode,
      ivgen === "essiv" ? `${mode}-essiv:sha256` : `${mode}-${ivgen}`,
    );
    assertEquals(parseLuksHeader(region), header);
    assertEquals(serializeLuksHeader(parseLuksHeader(region)), region.subarray(0, 592));
    assertEquals(header.slots.map((s) => s.active), [true, ...new Array(7).fill(false)]);
    assertEquals(header.slots[0]!.iterations >= 1000 && header.mkIterations >= 1000, true);
    // The data cipher round-trips a sector (the master key was recovered).
    const { cipher } = await unlock(region, "secret");
    const data = crypto.getRandomValues(new Uint8Array(1024));
    const copy = data.slice();
    cipher.encrypt(copy, 7);
    assertEquals(copy.some((b, i) => b !== data[i]), true);
    cipher.decrypt(copy, 7);
    assertEquals(copy, data);
    await assertRejects(unlock(region, "wrong"), /Invalid password, cannot unlock any keyslot/);
  });
}

Deno.test("createLuks refuses a cipher it cannot make before deriving anything", async () => {
  await assertRejects(
    createLuks({ cipherAlg: "twofish-256" }, enc("x")),
    /Cipher algorithm 'twofish-256' is not supported/,
  );
  await assertRejects(createLuks({ cipherMode: "ctr" }, enc("x")), /Cipher mode 'ctr'/);
  await assertRejects(
    createLuks({ cipherAlg: "aes-192", cipherMode: "cbc" }, enc("x")),
    /Cipher aes-192 in mode cbc is not supported: its key material \(96000 bytes\)/,
  );
  await assertRejects(createLuks({ hashAlg: "whirlpool" }, enc("x")), /Hash algorithm 'whirlpool'/);
});

Deno.test("createLuks: iteration counts scale with iter-time (master key an eighth of a slot's)", async () => {
  const { header } = await createLuks({ iterTime: 200 }, enc("x"));
  const slot = header.slots[0]!.iterations;
  // 64-byte key: two SHA-256 blocks a slot iteration, one a digest iteration.
  const ratio = (header.mkIterations * 8) / (slot * 2);
  assertEquals(ratio > 0.99 && ratio < 1.01, true, `ratio ${ratio}`);
  assertEquals(slot > 1000, true);
});
