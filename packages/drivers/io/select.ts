/**
 * The one factory that decides which I/O engine a file node gets. `auto` takes the fastest
 * that starts here (io_uring, then native libaio, then threads); a named engine that cannot
 * start falls to the next in that order. Every engine passed over is recorded with its
 * reason, and {@link reportSkipped} prints each (engine, reason) once per process.
 *
 * @module
 */

import { BlockError } from "@blockgraph/core";
import type { EngineChoice, EngineName, EngineOptions, IoEngine } from "./engine.ts";
import { createAioEngine } from "./aio.ts";
import { createThreadsEngine } from "./threads.ts";
import { createUringEngine } from "./uring.ts";

/** An engine constructor: returns an engine or throws a BlockError whose message is why not. */
export type EngineFactory = (options: EngineOptions) => IoEngine;

/** The engines from fastest to the fallback, with their factories. */
export const ENGINE_CHAIN: readonly { name: EngineName; create: EngineFactory }[] = [
  { name: "io_uring", create: createUringEngine },
  { name: "native", create: createAioEngine },
  { name: "threads", create: createThreadsEngine },
];

/**
 * Chooses from `chain`: starting at `preferred` (or the first for `auto`), the first engine
 * whose factory succeeds. Throws the last engine's error, naming every reason, when none
 * starts.
 */
export function selectEngine(
  chain: readonly { name: EngineName; create: EngineFactory }[],
  preferred: EngineName | "auto",
  options: EngineOptions,
): EngineChoice {
  const skipped: { name: EngineName; reason: string }[] = [];
  let start = preferred === "auto" ? 0 : chain.findIndex((e) => e.name === preferred);
  if (start < 0) {
    skipped.push({ name: preferred as EngineName, reason: "not built into this blockgraph" });
    start = chain.length - 1;
  }
  let last: BlockError | null = null;
  for (let i = start; i < chain.length; i++) {
    const { name, create } = chain[i]!;
    try {
      return { engine: create(options), skipped };
    } catch (e) {
      last = BlockError.from(e);
      skipped.push({ name, reason: last.message });
    }
  }
  throw new BlockError(
    last?.code ?? "ENOSYS",
    `No I/O engine can start: ${skipped.map((s) => `${s.name} (${s.reason})`).join(", ")}`,
  );
}

/** Chooses the engine for one file node (see {@link selectEngine}). */
export function acquireEngine(
  preferred: EngineName | "auto",
  options: EngineOptions,
): EngineChoice {
  return selectEngine(ENGINE_CHAIN, preferred, options);
}

const reported = new Set<string>();

/**
 * The lines saying which engines were passed over and what is used instead, each (engine,
 * reason) once per process: `blockgraph: file: io_uring unavailable (io_uring_setup:
 * Operation not permitted); using native`. Returns the lines not printed before; `print`
 * (default: stderr) gets each.
 */
export function reportSkipped(
  choice: EngineChoice,
  print: (line: string) => void = (line) => console.error(line),
): string[] {
  const lines: string[] = [];
  for (const s of choice.skipped) {
    const key = `${s.name}\u0000${s.reason}`;
    if (reported.has(key)) continue;
    reported.add(key);
    const line =
      `blockgraph: file: ${s.name} unavailable (${s.reason}); using ${choice.engine.name}`;
    lines.push(line);
    print(line);
  }
  return lines;
}
