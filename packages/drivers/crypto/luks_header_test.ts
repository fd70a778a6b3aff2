import { deepStrictEqual as assertEquals, throws as assertThrows } from "node:assert";
import {
  LUKS_HEADER_BYTES,
  LUKS_MAGIC,
  LUKS_SLOT_ACTIVE,
  luksCipher,
  parseLuksHeader,
} from "./luks_header.ts";

/** A LUKS 1 header as QEMU writes one: aes xts-plain64 sha256, slot 0 active at sector 8. */
function header(mode = "xts-plain64", stripes = 4000): Uint8Array {
  const b = new Uint8Array(LUKS_HEADER_BYTES);
  const v = new DataView(b.buffer);
  b.set(LUKS_MAGIC);
  v.setUint16(6, 1);
  const put = (at: number, s: string) => b.set(new TextEncoder().encode(s), at);
  put(8, "aes");
  put(40, mode);
  put(72, "sha256");
  v.setUint32(104, 4096);
  v.setUint32(108, 64);
  v.setUint32(164, 1000);
  put(168, "d1e2f3");
  v.setUint32(208, LUKS_SLOT_ACTIVE);
  v.setUint32(212, 2000);
  v.setUint32(208 + 40, 8);
  v.setUint32(208 + 44, stripes);
  for (let i = 1; i < 8; i++) v.setUint32(208 + i * 48, 0xdead);
  return b;
}

Deno.test("a LUKS header parses, its cipher with it", () => {
  const h = parseLuksHeader(header("cbc-essiv:sha256"));
  assertEquals([h.cipherName, h.mode, h.ivgen, h.ivHash, h.hashSpec], [
    "aes",
    "cbc",
    "essiv",
    "sha256",
    "sha256",
  ]);
  assertEquals([h.keyBytes, h.payloadOffset, h.mkIterations, h.uuid], [64, 4096, 1000, "d1e2f3"]);
  assertEquals(h.slots.map((s) => s.active), [
    true,
    false,
    false,
    false,
    false,
    false,
    false,
    false,
  ]);
  assertEquals([h.slots[0]!.iterations, h.slots[0]!.keyOffset], [2000, 8]);
  assertEquals(luksCipher(parseLuksHeader(header())), {
    alg: "aes",
    mode: "xts",
    ivgen: "plain64",
  });
});

Deno.test("a broken or unsupported LUKS header is refused with QEMU's words", () => {
  const bad = header();
  bad[0] = 0;
  assertThrows(() => parseLuksHeader(bad), /Volume is not in LUKS format/);
  const v2 = header();
  v2[7] = 2;
  assertThrows(() => parseLuksHeader(v2), /Unsupported LUKS version 2/);
  assertThrows(
    () => luksCipher(parseLuksHeader(header("xts-plain64", 3))),
    /Keyslot 0 is corrupted \(stripes 3 != 4000\)/,
  );
  assertThrows(() => luksCipher(parseLuksHeader(header("ctr-plain64"))), /mode 'ctr'/);
  const serpent = header();
  serpent.set(new TextEncoder().encode("serpent"), 8);
  assertThrows(() => luksCipher(parseLuksHeader(serpent)), /Cipher 'serpent' is not supported/);
});
