import { DriverRegistry, Graph, IoVector } from "@blockgraph/core";
import { assert } from "../conformance/mod.ts";
import { memoryDriver } from "../protocols/memory.ts";
import { nullDriver } from "../protocols/null.ts";
import { nextTurn, sinceTurn, TURN_BUDGET_MS, yieldDue } from "./loop_turn.ts";

const registry = new DriverRegistry([nullDriver, memoryDriver]);

/**
 * Floods `options`' node with 4 KiB reads at depth 8 for `ms`, each worker issuing the next
 * read as soon as one completes, while a 5 ms interval timer and a TCP ping-pong run beside
 * it; returns how often each got through.
 */
async function flood(options: Record<string, unknown>, ms: number) {
  const graph = new Graph({ registry });
  const node = await graph.open(options, "test");
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const echo = (async () => {
    const c = await listener.accept();
    const b = new Uint8Array(1);
    try {
      while (await c.read(b)) await c.write(b);
    } catch { /* closed */ }
    c.close();
  })();
  const client = await Deno.connect({
    hostname: "127.0.0.1",
    port: (listener.addr as Deno.NetAddr).port,
  });
  let ticks = 0;
  let pings = 0;
  let reads = 0;
  let stop = false;
  const timer = setInterval(() => ticks++, 5);
  const pinger = (async () => {
    const b = new Uint8Array(1);
    while (!stop) {
      await client.write(b);
      if (await client.read(b) === null) break;
      pings++;
    }
  })();
  const t0 = performance.now();
  const worker = async () => {
    const qiov = IoVector.of(new Uint8Array(4096));
    while (performance.now() - t0 < ms) {
      await node.preadv((reads % 1024) * 4096, 4096, qiov, 0);
      reads++;
    }
  };
  try {
    await Promise.all(Array.from({ length: 8 }, worker));
  } finally {
    stop = true;
    clearInterval(timer);
    await pinger;
    client.close();
    await echo;
    listener.close();
    await node.unref("test");
    await graph.closeAll();
  }
  return { ticks, pings, reads };
}

for (
  const [name, options] of [
    ["null-co", { driver: "null-co", size: 1 << 30 }],
    ["memory", { driver: "memory", size: 4 << 20 }],
  ] as const
) {
  Deno.test(`${name} requests completing at once let timers and sockets run`, async () => {
    const r = await flood(options, 300);
    // Without the turns: no tick and no ping until the flood ends (measured: 0 and 1). With
    // them, on a quiet machine, 30-47 ticks and 100-1500 round trips; a busy one (the whole
    // suite beside other work on 2 cores) once gave 8 round trips, so the bar is a few.
    assert(r.reads > 10_000, `reads ${r.reads}`);
    assert(r.ticks >= 5, `a 5 ms timer ran ${r.ticks} times in 300 ms`);
    assert(r.pings >= 4, `a TCP ping-pong got ${r.pings} round trips in 300 ms`);
  });
}

Deno.test("yieldDue holds every caller once a turn is due, until nextTurn resolves", async () => {
  // Start a chain and run it past the budget without letting the loop turn.
  sinceTurn();
  const t0 = performance.now();
  while (performance.now() - t0 < TURN_BUDGET_MS + 1) { /* busy */ }
  let due = false;
  for (let i = 0; i < 64 && !due; i++) due = yieldDue();
  assert(due, "a turn is due after the budget");
  const turn = nextTurn();
  assert(nextTurn() === turn, "callers share one turn");
  assert(yieldDue(), "every caller waits while the turn is pending");
  await turn;
  assert(sinceTurn() < TURN_BUDGET_MS, "the chain restarts after the turn");
});
