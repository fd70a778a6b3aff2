/**
 * The `blockgraph` executable: `deno task blockgraph img create -f raw disk.img 1G`.
 *
 * @module
 */

import { denoIo } from "./common/cli_io.ts";
import { runMain } from "./run_main.ts";

if (import.meta.main) {
  Deno.exit(await runMain(Deno.args, denoIo()));
}
