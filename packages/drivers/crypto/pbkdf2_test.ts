import { deepStrictEqual as assertEquals, rejects as assertRejects } from "node:assert";
import { pbkdf2Sync } from "node:crypto";
import { hashDigestBytes, pbkdf2, pbkdf2Rate } from "./pbkdf2.ts";

const enc = (s: string) => new TextEncoder().encode(s);
const hex = (b: Uint8Array) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");

Deno.test("pbkdf2 gives RFC 6070's and RFC 7914's vectors", async () => {
  assertEquals(
    hex(await pbkdf2("sha1", enc("password"), enc("salt"), 4096, 20)),
    "4b007901b765489abead49d926f721d065a429c1",
  );
  assertEquals(
    hex(await pbkdf2("sha256", enc("passwd"), enc("salt"), 1, 64)),
    "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc" +
      "49ca9cccf179b645991664b39d77ef317c71b845b1e30bd509112041d3a19783",
  );
});

Deno.test("pbkdf2 agrees with node:crypto for every hash LUKS names", async () => {
  const password = enc("a password");
  const salt = crypto.getRandomValues(new Uint8Array(32));
  for (const hash of ["sha1", "sha224", "sha256", "sha384", "sha512", "md5", "ripemd160"]) {
    // An output of several blocks, the last one cut short.
    const bytes = hashDigestBytes(hash) * 2 + 5;
    const mine = await pbkdf2(hash, password, salt, 1000, bytes);
    const theirs = pbkdf2Sync(password, salt, 1000, bytes, hash);
    assertEquals({ hash, key: hex(mine) }, { hash, key: hex(new Uint8Array(theirs)) });
  }
});

Deno.test("pbkdf2 refuses a hash it does not have; its rate is measured", async () => {
  await assertRejects(
    pbkdf2("whirlpool", enc("x"), enc("y"), 1, 16),
    /Hash algorithm 'whirlpool' is not supported/,
  );
  const rate = await pbkdf2Rate("sha256");
  assertEquals(rate > 10_000 && Number.isFinite(rate), true, `rate ${rate}`);
});
