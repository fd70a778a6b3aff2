import { BlockError } from "@blockgraph/core";
import { assert, assertEquals, assertRejectsWith } from "../conformance/mod.ts";
import type { EngineName, IoEngine } from "./engine.ts";
import { acquireEngine, type EngineFactory, reportSkipped, selectEngine } from "./select.ts";
import { createThreadsEngine } from "./threads.ts";

const refuse = (reason: string): EngineFactory => () => {
  throw new BlockError("EPERM", reason);
};

function chain(uring: EngineFactory): { name: EngineName; create: EngineFactory }[] {
  return [
    { name: "io_uring", create: uring },
    { name: "native", create: refuse("io_setup: Function not implemented") },
    { name: "threads", create: createThreadsEngine },
  ];
}

Deno.test("selectEngine falls to the next engine and records each reason", async () => {
  const choice = selectEngine(
    chain(refuse("io_uring_setup: Operation not permitted")),
    "auto",
    { direct: false },
  );
  assertEquals(choice.engine.name, "threads", "engine");
  assertEquals(
    choice.skipped.map((s) => `${s.name}: ${s.reason}`).join("; "),
    "io_uring: io_uring_setup: Operation not permitted; native: io_setup: Function not implemented",
    "skipped",
  );
  const printed: string[] = [];
  const lines = reportSkipped(choice, (l) => printed.push(l));
  assertEquals(
    lines[0],
    "blockgraph: file: io_uring unavailable (io_uring_setup: Operation not permitted); using threads",
    "the line",
  );
  assertEquals(printed.length, 2, "both printed");
  assertEquals(reportSkipped(choice, (l) => printed.push(l)).length, 0, "once per process");
  await choice.engine.release();
});

Deno.test("selectEngine starts at the named engine and fails naming every reason", async () => {
  const choice = selectEngine(chain(refuse("x")), "threads", { direct: false });
  assertEquals(choice.skipped.length, 0, "threads asked, threads given");
  await choice.engine.release();
  const none = [{ name: "io_uring" as const, create: refuse("no ring") }];
  const e = await assertRejectsWith(
    Promise.resolve().then(() => selectEngine(none, "auto", { direct: false })),
    "EPERM",
    "nothing starts",
  );
  assert(e.message.includes("io_uring (no ring)"), e.message);
});

Deno.test("acquireEngine auto picks io_uring on this machine", async () => {
  const choice = acquireEngine("auto", { direct: false });
  const engine: IoEngine = choice.engine;
  assertEquals(engine.name, "io_uring", `engine (skipped: ${JSON.stringify(choice.skipped)})`);
  await engine.release();
});
