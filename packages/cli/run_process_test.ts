import { deepStrictEqual as assertEquals } from "node:assert";

/** `blockgraph io -f raw -c "read -v 0 1M" FILE` as a process, its streams piped. */
function dumpProcess(file: string): Deno.ChildProcess {
  return new Deno.Command(Deno.execPath(), {
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
}

async function withFile(fn: (file: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "blockgraph-process-" });
  try {
    await Deno.writeFile(`${dir}/d.raw`, new Uint8Array(1 << 20).fill(0x41));
    await fn(`${dir}/d.raw`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("blockgraph writes all of a long output to a pipe, buffered", () =>
  withFile(async (file) => {
    const out = await dumpProcess(file).output();
    const lines = new TextDecoder().decode(out.stdout).split("\n");
    // 65536 dump rows, the two report lines, and the empty string after the last newline.
    assertEquals([out.code, lines.length, lines[65535]!.slice(0, 10)], [0, 65539, "000ffff0: "]);
    assertEquals(lines[65536], "read 1048576/1048576 bytes at offset 0");
  }));

Deno.test("blockgraph ends quietly with status 141 when its output is closed early", () =>
  withFile(async (file) => {
    const child = dumpProcess(file);
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
  }));
