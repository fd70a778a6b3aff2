import { deepStrictEqual as assertEquals, ok as assert } from "node:assert";
import { defaultRegistry } from "@blockgraph/drivers";
import { defaultBanner, pickPort, prepareDefault } from "./default_config.ts";

Deno.test("pickPort skips a taken port and takes the next free one", () => {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const taken = (l.addr as Deno.NetAddr).port;
  try {
    const p = pickPort(taken, 50);
    assert(p > taken && p < taken + 50, `${p}`);
  } finally {
    l.close();
  }
});

Deno.test("prepareDefault creates the disk once, reuses it, and says how to connect", async () => {
  const dir = await Deno.makeTempDir({ prefix: "bg-default-" });
  try {
    const registry = defaultRegistry();
    const first = await prepareDefault(registry, `${dir}/data`);
    assertEquals(first.created, true);
    assertEquals(first.format, registry.find("qcow2")?.create ? "qcow2" : "raw");
    assertEquals(first.diskPath, `${dir}/data/disk.${first.format}`);
    assertEquals(first.monitorPath, `${dir}/data/qmp.sock`);
    assertEquals(first.actions.map((a) => a.kind), [
      "blockdev",
      "nbd-server",
      "export",
      "monitor-path",
    ]);
    const st = await Deno.stat(first.diskPath);
    assert(st.size <= 1 << 30 && (st.blocks ?? 0) * 512 < 16 << 20, "sparse");
    const again = await prepareDefault(registry, `${dir}/data`);
    assertEquals([again.created, again.diskPath], [false, first.diskPath]);
    const banner = defaultBanner(again);
    assert(banner.includes(`qemu-img info nbd://127.0.0.1:${again.port}/disk`), banner);
    assert(banner.includes(`nbdinfo nbd://127.0.0.1:${again.port}/disk`), banner);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
