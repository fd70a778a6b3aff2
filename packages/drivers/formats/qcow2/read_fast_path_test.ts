import { assertEquals } from "../../conformance/mod.ts";
import { cachedDataOffset, contiguousDataOffset } from "./read_fast_path.ts";
import { q, qcow2Params, withImage } from "./test_fixtures.ts";

Deno.test("contiguousDataOffset: one data-file range only for clusters stored in order", async () => {
  await withImage(qcow2Params(), async ({ open }) => {
    const node = await open();
    const image = q(node).image;
    const cs = image.cs;
    // Cluster 1 first, then 0, then 2: host order 1, 0, 2.
    for (const c of [1, 0, 2]) await node.write(c * cs, new Uint8Array(cs).fill(c + 1));
    const h0 = cachedDataOffset(image, 0, cs);
    const h1 = cachedDataOffset(image, cs, cs);
    assertEquals(h0 > h1 && h1 > 0, true, "cluster 0 stored after cluster 1");
    assertEquals(contiguousDataOffset(image, 100, 200), h0 + 100, "inside one cluster");
    assertEquals(contiguousDataOffset(image, 0, 2 * cs), -1, "clusters 0 and 1 are out of order");
    assertEquals(
      contiguousDataOffset(image, cs + 512, cs),
      -1,
      "cluster 1 then 2: a gap (0 between)",
    );
    assertEquals(contiguousDataOffset(image, 3 * cs, 4096), -1, "unallocated");
    await node.write(3 * cs, new Uint8Array(cs).fill(9));
    assertEquals(
      contiguousDataOffset(image, 2 * cs + 7, cs),
      cachedDataOffset(image, 2 * cs, cs) + 7,
      "2 then 3, in order",
    );
    await node.pwriteZeroes(3 * cs, cs);
    assertEquals(contiguousDataOffset(image, 2 * cs, 2 * cs), -1, "a zero cluster is not data");
    await node.unref("t");
  });
});
