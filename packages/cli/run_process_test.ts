import { deepStrictEqual as assertEquals } from "node:assert";

Deno.test("blockgraph ends quietly with status 141 when its output is closed early", async () => {
  const dir = await Deno.makeTempDir({ prefix: "blockgraph-main-" });
  try {
    const file = `${dir}/d.raw`;
    await Deno.writeFile(file, new Uint8Array(1 << 20).fill(0x41));
    const child = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        new URL("./main.ts", import.meta.url).pathname,
        "io",
        "-f",
        "raw",
        "-c",
        "read -v 0 1M",
        file,
      ],
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    // Read a little of the 4.5 MB dump, then close the pipe as `head` does.
    const reader = child.stdout.getReader();
    const first = await reader.read();
    assertEquals(new TextDecoder().decode(first.value).slice(0, 10), "00000000: ");
    await reader.cancel();
    const [status, err] = await Promise.all([
      child.status,
      new Response(child.stderr).text(),
    ]);
    assertEquals([status.code, err], [141, ""]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
