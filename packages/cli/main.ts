/**
 * The `blockgraph` executable: `deno task blockgraph img create -f raw disk.img 1G`.
 *
 * @module
 */

import { runProcess } from "./run_process.ts";

if (import.meta.main) {
  // `deno task` runs in the workspace root; file names are the user's, relative to where
  // they typed the command.
  const cwd = Deno.env.get("INIT_CWD");
  if (cwd) Deno.chdir(cwd);
  await runProcess(Deno.args);
}
