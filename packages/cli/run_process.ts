/**
 * `blockgraph` as a process: the command run on the process's own streams, its output
 * flushed, and its status as the exit status. Both entries use it: `main.ts` and the bundle's
 * `tools/cli_entry.ts`.
 *
 * @module
 */

import { denoIo } from "./common/cli_io.ts";
import { runMain } from "./run_main.ts";

/**
 * Runs `blockgraph` with `args` (without the program name) and exits with its status. A
 * reader that went away (`| head`) ends it as SIGPIPE ends a C tool, quietly and with the
 * shell's 128 + 13, once the graph has been closed on the way out.
 */
export async function runProcess(args: readonly string[]): Promise<never> {
  const io = denoIo();
  let status: number;
  try {
    status = await runMain(args, io);
    io.flush?.();
  } catch (e) {
    if (e instanceof Deno.errors.BrokenPipe) Deno.exit(141);
    // What was printed before the failure still comes out first.
    try {
      io.flush?.();
    } catch { /* the failure itself matters more */ }
    throw e;
  }
  Deno.exit(status);
}
