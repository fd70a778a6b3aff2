import { deepStrictEqual as assertEquals, notDeepStrictEqual } from "node:assert";
import { afMerge, afSplit } from "./af_split.ts";
import { loadNodeCrypto } from "./node_crypto.ts";

Deno.test("the AF splitter's stripes merge back into the key, and only all of them", async () => {
  await loadNodeCrypto();
  for (const [hash, n] of [["sha256", 64], ["sha1", 32], ["sha512", 16]] as const) {
    const key = crypto.getRandomValues(new Uint8Array(n));
    const split = afSplit(hash, key, 4000);
    assertEquals(split.length, n * 4000);
    assertEquals(afMerge(hash, n, 4000, split), key);
    split[n * 17] = split[n * 17]! ^ 1;
    notDeepStrictEqual(afMerge(hash, n, 4000, split), key);
  }
});
