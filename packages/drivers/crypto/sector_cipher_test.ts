import { deepStrictEqual as assertEquals, throws as assertThrows } from "node:assert";
import { createHash } from "node:crypto";
import { loadNodeCrypto } from "./node_crypto.ts";
import { type CipherMode, type IvGenAlg, SectorCipher } from "./sector_cipher.ts";

/** 1024 bytes (two sectors): byte i is 7i mod 256. */
function plaintext(): Uint8Array {
  return Uint8Array.from({ length: 1024 }, (_, i) => (i * 7) & 0xff);
}

function key(n: number): Uint8Array {
  return Uint8Array.from({ length: n }, (_, i) => i);
}

/**
 * SHA-256 of the ciphertext of {@link plaintext} from OpenSSL (Python's `cryptography`, AES in
 * XTS, and CBC with the IVs dm-crypt makes), by mode and first sector number.
 */
const OPENSSL: [string, CipherMode, IvGenAlg, number, Record<number, string>][] = [
  ["aes-256-xts-plain64", "xts", "plain64", 64, {
    5: "ceba090544f7debfd72de00a357bb227501f769ac2657257a4458fef906a2bad",
    8589934595: "86662ad2b450c4d7445c0916f4b5122a003762da26f37cd56014014638f10829",
  }],
  ["aes-128-xts-plain64", "xts", "plain64", 32, {
    5: "4f797a6529de03dd4a82fd50143c2c2f72409427baacc38eb8891037625862e5",
    8589934595: "9a1d4f682938ac4b3dbd9030dcaeda24bda5bfe55585a3a5665931910c0fc29a",
  }],
  ["aes-128-cbc-essiv:sha256", "cbc", "essiv", 16, {
    5: "3da181ce80948ada14995dbac66451d4d4a8a4ecdfd42706a6ca7c8fabbd35bb",
    8589934595: "6c4f3e96ef97507899ffac6b0c25baa39acccc11c37fd8141aac4d51638db3aa",
  }],
  ["aes-256-cbc-plain", "cbc", "plain", 32, {
    5: "c60f5796873b801ee5ce1a7222fafb952ad46d87dbbdcb77e02df9ee0f5aec98",
    8589934595: "477004a34ba976c037a52d8bd0970414841f145953f3064085a04a726d61a8c2",
  }],
  ["aes-256-cbc-plain64", "cbc", "plain64", 32, {
    5: "c60f5796873b801ee5ce1a7222fafb952ad46d87dbbdcb77e02df9ee0f5aec98",
    8589934595: "93ccb11781f7116bfc44765d498454566fd3a2f8ef89c6d482ff64a567332ed5",
  }],
  ["aes-256-ecb", "ecb", "plain64", 32, {
    5: "db5e20ffedf254307aef39045053656e6e5d0dd360104ecbb709fa17be2b01f3",
  }],
];

Deno.test("sector ciphers encrypt as OpenSSL does, and decrypt back", async () => {
  await loadNodeCrypto();
  for (const [name, mode, ivgen, keyBytes, want] of OPENSSL) {
    const c = new SectorCipher({ alg: "aes", mode, ivgen, ivHash: "sha256", key: key(keyBytes) });
    for (const [sector, digest] of Object.entries(want)) {
      const buf = plaintext();
      c.encrypt(buf, Number(sector));
      assertEquals([name, sector, createHash("sha256").update(buf).digest("hex")], [
        name,
        sector,
        digest,
      ]);
      c.decrypt(buf, Number(sector));
      assertEquals(buf, plaintext(), `${name} at ${sector} does not decrypt back`);
    }
  }
});

Deno.test("sector ciphers refuse what they cannot do", async () => {
  await loadNodeCrypto();
  assertThrows(
    () => new SectorCipher({ alg: "serpent", mode: "xts", ivgen: "plain64", key: key(64) }),
    /Cipher algorithm 'serpent' is not supported/,
  );
  assertThrows(
    () => new SectorCipher({ alg: "aes", mode: "cbc", ivgen: "plain64", key: key(20) }),
    /Invalid AES key length 20/,
  );
  const c = new SectorCipher({ alg: "aes", mode: "xts", ivgen: "plain64", key: key(64) });
  assertThrows(() => c.decrypt(new Uint8Array(100), 0), /not a multiple of the sector size/);
});
