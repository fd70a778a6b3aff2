import { deepStrictEqual as assertEquals } from "node:assert";
import { UserObjects } from "@blockgraph/core";
import { secretLookupFailure } from "../common/object_option.ts";
import { encryptionOptionError, encryptionValues, luksHeaderBytes } from "./create_encryption.ts";

Deno.test("encryption options: QemuOpts' checks of booleans and numbers", () => {
  assertEquals(encryptionOptionError("encryption", "off"), null);
  assertEquals(
    encryptionOptionError("encryption", "yes"),
    "Parameter 'encryption' expects 'on' or 'off'",
  );
  assertEquals(encryptionOptionError("encrypt.iter-time", "0x10"), null);
  assertEquals(
    encryptionOptionError("encrypt.iter-time", "-1"),
    "Parameter 'encrypt.iter-time' expects a number",
  );
  assertEquals(encryptionOptionError("encrypt.format", "anything"), null);
});

Deno.test("encryption options go to the driver with QemuOpts' booleans and numbers", () => {
  assertEquals(
    encryptionValues({
      encryption: "off",
      "encrypt.format": "luks",
      "encrypt.iter-time": "0x10",
      "encrypt.key-secret": "s",
    }),
    {
      encryption: false,
      "encrypt.format": "luks",
      "encrypt.iter-time": 16,
      "encrypt.key-secret": "s",
    },
  );
  assertEquals(encryptionValues({ "encrypt.iter-time": "010" }), { "encrypt.iter-time": 8 });
});

Deno.test("LUKS header sizes as qemu-img 7.2 measures them, computed", () => {
  const objects = new UserObjects();
  objects.add({ "qom-type": "secret", id: "s0", data: "x" });
  objects.add({ "qom-type": "authz-simple", id: "a0", identity: "x" });
  const secret = (id: string) => secretLookupFailure(objects, id);
  const luks = (extra: Record<string, string>) =>
    luksHeaderBytes({ "encrypt.key-secret": "s0", ...extra }, secret);
  // qemu-img measure -O qcow2 --size 1G with 64 KiB clusters reports 393216 bytes plus these
  // rounded up to a cluster: 2490368 (aes-256 xts, the default), 983040 (aes-128 cbc),
  // 1966080 (serpent-192 xts), 1507328 (aes-128 xts, twofish-256 cbc).
  assertEquals(luks({}), 2068480);
  assertEquals(luks({ "encrypt.cipher-alg": "aes-128", "encrypt.cipher-mode": "cbc" }), 528384);
  assertEquals(luks({ "encrypt.cipher-alg": "serpent-192" }), 1544192);
  assertEquals(luks({ "encrypt.cipher-alg": "aes-128" }), 1052672);
  assertEquals(
    luks({ "encrypt.cipher-alg": "twofish-256", "encrypt.cipher-mode": "cbc" }),
    1052672,
  );
  assertEquals(luks({ "encrypt.cipher-alg": "des" }), { error: "Algorithm 'des' not supported" });
  assertEquals(luks({ "encrypt.cipher-alg": "cast5-128" }), {
    error: "Unsupported cipher mode xts",
  });
  assertEquals(luks({ "encrypt.cipher-mode": "bogus" }), {
    error: "Parameter 'cipher-mode' does not accept value 'bogus'",
  });
  assertEquals(luksHeaderBytes({}, secret), {
    error: "Parameter 'encrypt.key-secret' is required for cipher",
  });
  assertEquals(luksHeaderBytes({ "encrypt.key-secret": "x" }, secret), {
    error: "No secret with id 'x'",
  });
  assertEquals(luksHeaderBytes({ "encrypt.key-secret": "a0" }, secret), {
    error: "Object with id 'a0' is not a secret",
  });
});
