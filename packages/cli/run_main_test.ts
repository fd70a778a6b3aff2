import { deepStrictEqual as assertEquals, ok as assert } from "node:assert";
import { captureIo } from "./common/cli_io.ts";
import { runMain } from "./run_main.ts";

Deno.test("runMain dispatches, helps, and refuses unknown commands", async () => {
  const help = captureIo();
  assertEquals(await runMain(["--help"], help), 0);
  assert(help.stdout.includes("io     disk exerciser"));
  const bad = captureIo();
  assertEquals(await runMain(["frob"], bad), 1);
  assertEquals(bad.stderr, "blockgraph: unknown command 'frob'\nTry 'blockgraph --help'\n");
  const io = captureIo();
  assertEquals(await runMain(["io", "-c", "help open"], io), 0);
  assert(io.stdout.startsWith("open [-rsCnkU]"));
});
