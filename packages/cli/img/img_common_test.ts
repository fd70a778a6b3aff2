import { deepStrictEqual as assertEquals } from "node:assert";
import { Graph } from "@blockgraph/core";
import { defaultRegistry } from "@blockgraph/drivers";
import { captureIo } from "../common/cli_io.ts";
import { BULK_WRITE_BEHIND, imgOpen } from "./img_common.ts";

Deno.test("imgOpen gives a bulk-written image's file node write-behind when its cache flushes", async () => {
  const dir = await Deno.makeTempDir({ prefix: "blockgraph-img-common-" });
  const graph = new Graph({ registry: defaultRegistry() });
  try {
    const path = `${dir}/t.raw`;
    await Deno.writeFile(path, new Uint8Array(65536));
    const behindOf = async (cache: string, bulkWrite: boolean, format?: string) => {
      const io = captureIo();
      const img = await imgOpen(graph, io, {
        filename: path,
        format,
        readOnly: false,
        cache,
        bulkWrite,
      });
      if (!img) throw new Error(io.stderr);
      try {
        const file = img.node.driver.name === "file" ? img.node : img.node.file!.node!;
        return file.options["write-behind"];
      } finally {
        await img.backend.unref();
      }
    };
    assertEquals(await behindOf("writeback", true, "raw"), BULK_WRITE_BEHIND);
    assertEquals(await behindOf("writethrough", true, "raw"), BULK_WRITE_BEHIND);
    assertEquals(await behindOf("writeback", true, "file"), BULK_WRITE_BEHIND, "a bare file node");
    // Nothing to gain where nothing is flushed, or nothing cached; nor for other commands.
    assertEquals(await behindOf("unsafe", true, "raw"), 0);
    assertEquals(await behindOf("none", true, "raw"), 0);
    assertEquals(await behindOf("directsync", true, "raw"), 0);
    assertEquals(await behindOf("writeback", false, "raw"), 0);
  } finally {
    await graph.closeAll();
    await Deno.remove(dir, { recursive: true });
  }
});
