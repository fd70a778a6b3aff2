import { BlockStatusFlags } from "@blockgraph/core";
import { assertEquals } from "../../conformance/mod.ts";
import { extentStatus } from "./extent_status.ts";
import { cachedDataOffset } from "./read_fast_path.ts";
import { q, qcow2Params, withImage } from "./test_fixtures.ts";

Deno.test("extentStatus: data maps into the file; zero and unallocated clusters as QEMU says", async () => {
  await withImage(qcow2Params(), async ({ open, mem }) => {
    const node = await open();
    const image = q(node).image;
    const cs = image.cs;
    await node.write(0, new Uint8Array(cs).fill(1));
    await node.pwriteZeroes(cs, cs);
    const at = async (offset: number) =>
      extentStatus(image, await image.lock.run(() => image.lookup(offset, cs)), offset);
    const data = await at(0);
    assertEquals(data.status, BlockStatusFlags.DATA | BlockStatusFlags.OFFSET_VALID, "data");
    assertEquals(data.file, mem, "mapped into the image file");
    assertEquals(data.map, cachedDataOffset(image, 0, cs), "at its host offset");
    assertEquals((await at(cs)).status & BlockStatusFlags.ZERO, BlockStatusFlags.ZERO, "zero");
    assertEquals((await at(2 * cs)).status, 0, "unallocated: ask the backing chain");
    await node.unref("t");
  });
});
