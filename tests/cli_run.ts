/**
 * Running blockgraph's own `img` and `io` in process, the way the differential tests run a
 * peer with `runPeer`: the exit code, standard output and standard error, in the same
 * {@link PeerResult} so that the two compare whole.
 *
 * @module
 */

import { deepStrictEqual as assertEquals } from "node:assert";
import { captureIo, runImg, runIo } from "@blockgraph/cli";
import { type PeerResult, runPeer } from "./peer_run.ts";

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

/** qemu-io's timing lines, which differ from run to run. */
const STATS = /^\S+ \S*, \d+ ops; .*\n/gm;

/**
 * Runs qemu-`tool` and our `tool` with `args` (in folder `cwd`, by default this process's):
 * the same exit status and output, qemu-io's timing lines aside. Returns what ours printed.
 */
export async function sameAsQemu(
  tool: "io" | "img",
  args: string[],
  cwd?: string,
): Promise<PeerResult> {
  const theirs = await runPeer(`qemu-${tool}`, args, cwd === undefined ? {} : { cwd });
  const ours = await (tool === "io" ? runOurIo(args, cwd) : runOurImg(args, cwd));
  theirs.out = theirs.out.replace(STATS, "");
  ours.out = ours.out.replace(STATS, "");
  assertEquals(ours, theirs, `${tool} ${args.join(" ")}`);
  return ours;
}
