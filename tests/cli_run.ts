/**
 * Running blockgraph's own `img` and `io` in process, the way the differential tests run a
 * peer with `runPeer`: the exit code, standard output and standard error, in the same
 * {@link PeerResult} so that the two compare whole.
 *
 * @module
 */

import { captureIo, runImg, runIo } from "@blockgraph/cli";
import type { PeerResult } from "./peer_run.ts";

type Main = (args: string[], io: ReturnType<typeof captureIo>) => Promise<number>;

/** Runs `main` with `args` (in the folder `cwd`, when given) and captures what it printed. */
async function runOurs(main: Main, args: string[], cwd?: string): Promise<PeerResult> {
  const io = captureIo();
  const prev = Deno.cwd();
  if (cwd !== undefined) Deno.chdir(cwd);
  try {
    const code = await main(args, io);
    return { code, out: io.stdout, err: io.stderr };
  } finally {
    if (cwd !== undefined) Deno.chdir(prev);
  }
}

/** Runs `blockgraph img args` in process (in the folder `cwd`, when given). */
export function runOurImg(args: string[], cwd?: string): Promise<PeerResult> {
  return runOurs(runImg, args, cwd);
}

/** Runs `blockgraph io args` in process (in the folder `cwd`, when given). */
export function runOurIo(args: string[], cwd?: string): Promise<PeerResult> {
  return runOurs(runIo, args, cwd);
}

/** Runs `blockgraph io args` in process and fails with its output unless it exits 0; its output. */
export async function mustOurIo(args: string[]): Promise<string> {
  const r = await runOurIo(args);
  if (r.code !== 0) {
    throw new Error(`blockgraph io ${args.join(" ")} failed (${r.code}):\n${r.out}${r.err}`);
  }
  return r.out + r.err;
}
