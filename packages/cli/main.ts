/**
 * The `blockgraph` executable: `deno task blockgraph img create -f raw disk.img 1G`.
 *
 * @module
 */

import { denoIo } from "./common/cli_io.ts";
import { runMain } from "./run_main.ts";

if (import.meta.main) {
  // `deno task` runs in the workspace root; file names are the user's, relative to where
  // they typed the command.
  const cwd = Deno.env.get("INIT_CWD");
  if (cwd) Deno.chdir(cwd);
  let status: number;
  try {
    status = await runMain(Deno.args, denoIo());
  } catch (e) {
    // The reader went away (`| head`): end as a C tool that SIGPIPE kills does, quietly and
    // with the shell's 128 + 13, once the graph has been closed on the way out.
    if (e instanceof Deno.errors.BrokenPipe) Deno.exit(141);
    throw e;
  }
  Deno.exit(status);
}
