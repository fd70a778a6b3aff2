import { deepStrictEqual as assertEquals } from "node:assert";
import { encryptionRequest } from "./create_encryption.ts";

Deno.test("encryption options: what they ask for, or QEMU's error, in QEMU's order", () => {
  assertEquals(encryptionRequest({}), null);
  assertEquals(encryptionRequest({ encryption: "off" }), null);
  assertEquals(encryptionRequest({ encryption: "on" }), { format: "qcow", keySecret: false });
  assertEquals(encryptionRequest({ "encrypt.format": "aes", "encrypt.key-secret": "s" }), {
    format: "qcow",
    keySecret: true,
  });
  assertEquals(encryptionRequest({ encryption: "on", "encrypt.format": "luks" }), {
    error: "'encrypt.format' and its alias 'encryption' can't be used at the same time",
  });
  assertEquals(encryptionRequest({ "encrypt.hash-alg": "sha256" }), {
    error: "Parameter 'encrypt.format' is missing",
  });
  assertEquals(encryptionRequest({ "encrypt.format": "" }), {
    error: "Parameter 'format' does not accept value ''",
  });
  assertEquals(encryptionRequest({ "encrypt.format": "qcow", "encrypt.iter-time": "10" }), {
    error: "Parameter 'encrypt.iter-time' is unexpected",
  });
  assertEquals(encryptionRequest({ "encrypt.format": "luks", "encrypt.cipher-mode": "gcm" }), {
    error: "Parameter 'cipher-mode' does not accept value 'gcm'",
  });
  assertEquals(
    encryptionRequest({ "encrypt.format": "luks", "encrypt.cipher-alg": "twofish-256" }),
    { format: "luks", keySecret: false },
  );
});

Deno.test("encryption options: encryption=on given as a boolean is the qcow format", () => {
  assertEquals(encryptionRequest({ encryption: true }), { format: "qcow", keySecret: false });
  assertEquals(encryptionRequest({ encryption: false, "encrypt.format": "luks" }), {
    format: "luks",
    keySecret: false,
  });
});
