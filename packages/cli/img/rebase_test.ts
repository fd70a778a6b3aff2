import { deepStrictEqual as assertEquals } from "node:assert";
import { allocateIoMemory } from "@blockgraph/drivers";
import { captureIo } from "../common/cli_io.ts";
import { runImg } from "./run_img.ts";

const MIB = 1 << 20;

async function img(args: string[]): Promise<void> {
  const io = captureIo();
  const status = await runImg(args, io);
  assertEquals([args[0], status, io.stderr], [args[0], 0, ""]);
}

Deno.test("img rebase copies what differs whatever the process's I/O memory held before", async () => {
  const dir = await Deno.makeTempDir({ prefix: "blockgraph-rebase-" });
  try {
    const [old, neu, top] = [`${dir}/old.raw`, `${dir}/new.qcow2`, `${dir}/top.qcow2`];
    // The old base holds a pattern where the new one reads as zeros.
    const data = new Uint8Array(4 * MIB).fill(0x5a);
    await Deno.writeFile(old, data);
    await img(["create", "-q", "-f", "qcow2", neu, "4M"]);
    await img(["create", "-q", "-f", "qcow2", "-b", old, "-F", "raw", top]);
    // Memory released with the same pattern in it: malloc hands such chunks out again as
    // they are, so a buffer taken for zeros from there would hold the old data.
    for (let i = 0; i < 4; i++) {
      const m = allocateIoMemory(2 * MIB);
      m.bytes.fill(0x5a);
      m.release();
    }
    await img(["rebase", "-b", neu, "-F", "qcow2", top]);
    const io = captureIo();
    assertEquals(await runImg(["compare", "-f", "qcow2", "-F", "raw", top, old], io), 0);
    assertEquals(io.stdout, "Images are identical.\n");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
