import { deepStrictEqual as assertEquals, rejects as assertRejects } from "node:assert";
import { createCipheriv } from "node:crypto";
import { UserObjects } from "@blockgraph/core";
import { secretBytes, secretPassword } from "./secret.ts";

const text = (b: Uint8Array) => new TextDecoder().decode(b);

Deno.test("secrets give their data: raw, base64, from a file, and decrypted with keyid", async () => {
  const objects = new UserObjects();
  objects.add({ "qom-type": "secret", id: "raw", data: "pass word" });
  objects.add({ "qom-type": "secret", id: "b64", data: btoa("hidden"), format: "base64" });
  const file = await Deno.makeTempFile();
  await Deno.writeTextFile(file, "from a file");
  objects.add({ "qom-type": "secret", id: "f", file });
  // libvirt's way: a 32-byte master key, the password AES-256-CBC encrypted with it.
  const master = crypto.getRandomValues(new Uint8Array(32));
  const iv = crypto.getRandomValues(new Uint8Array(16));
  const c = createCipheriv("aes-256-cbc", master, iv);
  const enc = new Uint8Array([...c.update(new TextEncoder().encode("s3cret")), ...c.final()]);
  objects.add({
    "qom-type": "secret",
    id: "master",
    data: btoa(String.fromCharCode(...master)),
    format: "base64",
  });
  objects.add({
    "qom-type": "secret",
    id: "wrapped",
    data: btoa(String.fromCharCode(...enc)),
    format: "base64",
    keyid: "master",
    iv: btoa(String.fromCharCode(...iv)),
  });
  try {
    assertEquals(text(await secretBytes(objects, "raw")), "pass word");
    assertEquals(text(await secretBytes(objects, "b64")), "hidden");
    assertEquals(text(await secretBytes(objects, "f")), "from a file");
    assertEquals(text(await secretPassword(objects, "wrapped")), "s3cret");
  } finally {
    await Deno.remove(file);
  }
});

Deno.test("a secret that is missing, of another type, or unusable is refused", async () => {
  const objects = new UserObjects();
  objects.add({ "qom-type": "authz-simple", id: "a", identity: "x" });
  objects.add({ "qom-type": "secret", id: "short", data: "0123" });
  objects.add({ "qom-type": "secret", id: "w", data: "zzzz", keyid: "short", iv: btoa("x") });
  objects.add({ "qom-type": "secret", id: "latin", data: btoa("\xff\xfe"), format: "base64" });
  await assertRejects(secretBytes(objects, "nope"), /No secret with id 'nope'/);
  await assertRejects(secretBytes(objects, "a"), /Object with id 'a' is not a secret/);
  await assertRejects(secretBytes(objects, "w"), /Key should be 32 bytes in length/);
  await assertRejects(
    secretPassword(objects, "latin"),
    /Data from secret latin is not valid UTF-8/,
  );
});
