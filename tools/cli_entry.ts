/**
 * The entry of the bundled command (`deno task build`, `dist/blockgraph.js`): `blockgraph`
 * with file names relative to the working folder it was started in.
 *
 * `packages/cli/main.ts` changes to `$INIT_CWD` first, because `deno task blockgraph` runs it
 * in the workspace root and says in that variable where the user typed the command. The
 * bundle is started directly, and a script that starts it may well run under `npm run` or
 * `deno task`, which set `INIT_CWD` for everything they start: honouring it here would take
 * the script's relative file names from the wrong folder.
 *
 * @module
 */

import { runProcess } from "../packages/cli/run_process.ts";

await runProcess(Deno.args);
