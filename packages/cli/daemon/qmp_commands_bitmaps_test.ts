import { deepStrictEqual as assertEquals } from "node:assert";
import { startQmpDaemon } from "./testing_qmp_daemon.ts";

async function setup() {
  const s = await startQmpDaemon("bg-bitmap-");
  const { daemon, q } = s;
  await q.ok("blockdev-add", { driver: "memory", "node-name": "m0", size: 1 << 20 });
  await q.ok("blockdev-add", { driver: "memory", "node-name": "m1", size: 2 << 20 });
  return {
    ...s,
    async write(node: string, offset: number, bytes: number) {
      await daemon.graph.findNode(node)!.write(offset, new Uint8Array(bytes).fill(1));
    },
    async bitmaps(node = "m0"): Promise<Record<string, unknown>[] | undefined> {
      const nodes = await q.ok("query-named-block-nodes", { flat: true }) as Record<
        string,
        unknown
      >[];
      const n = nodes.find((x) => x["node-name"] === node)!;
      return n["dirty-bitmaps"] as Record<string, unknown>[] | undefined;
    },
  };
}

function bm(name: string, count: number, o: Record<string, unknown> = {}) {
  return {
    name,
    count,
    granularity: 65536,
    recording: true,
    busy: false,
    persistent: false,
    ...o,
  };
}

Deno.test("block-dirty-bitmap-add/-remove: QEMU's checks and messages, dirty-bitmaps in queries", async () => {
  await using s = await setup();
  const q = s.q;
  const fail = async (cmd: string, args: Record<string, unknown>) =>
    (await q.fails(cmd, args)).desc;
  assertEquals(await s.bitmaps(), undefined);
  await q.ok("block-dirty-bitmap-add", { node: "m0", name: "bm0" });
  assertEquals(
    await fail("block-dirty-bitmap-add", { node: "m0", name: "bm0" }),
    "Bitmap already exists: bm0",
  );
  assertEquals(
    await fail("block-dirty-bitmap-add", { node: "m0", name: "" }),
    "Bitmap name cannot be empty",
  );
  assertEquals(
    await fail("block-dirty-bitmap-add", { node: "zz", name: "x" }),
    "Cannot find device='zz' nor node-name='zz'",
  );
  assertEquals(
    await fail("block-dirty-bitmap-add", { node: "m0", name: "p", persistent: true }),
    "Can't store persistent bitmaps to m0: Operation not supported",
  );
  for (const g of [1000, 256]) {
    assertEquals(
      await fail("block-dirty-bitmap-add", { node: "m0", name: "g", granularity: g }),
      "Granularity must be power of 2 and at least 512",
    );
  }
  assertEquals(
    await fail("block-dirty-bitmap-add", { node: "m0", name: "g", granularity: 2 ** 32 }),
    "Parameter 'granularity' expects uint32_t",
  );
  assertEquals(await fail("block-dirty-bitmap-add", { node: "m0" }), "Parameter 'name' is missing");
  assertEquals(await fail("block-dirty-bitmap-add", { name: "x" }), "Parameter 'node' is missing");
  assertEquals(
    await fail("block-dirty-bitmap-remove", { node: "m0", name: "x", foo: 1 }),
    "Parameter 'foo' is unexpected",
  );
  await q.ok("block-dirty-bitmap-add", { node: "m0", name: "d", disabled: true, granularity: 512 });
  await s.write("m0", 4096, 4096);
  assertEquals(await s.bitmaps(), [
    bm("d", 0, { granularity: 512, recording: false }),
    bm("bm0", 65536),
  ]);
  for (const cmd of ["remove", "clear", "enable", "disable"]) {
    assertEquals(
      await fail(`block-dirty-bitmap-${cmd}`, { node: "m0", name: "nope" }),
      "Dirty bitmap 'nope' not found",
    );
    assertEquals(
      await fail(`block-dirty-bitmap-${cmd}`, { node: "zz", name: "bm0" }),
      "Node 'zz' not found",
    );
  }
  await q.ok("block-dirty-bitmap-remove", { node: "m0", name: "d" });
  assertEquals(await s.bitmaps(), [bm("bm0", 65536)]);
  await q.ok("block-dirty-bitmap-remove", { node: "m0", name: "bm0" });
  assertEquals(await s.bitmaps(), undefined);
});

Deno.test("block-dirty-bitmap-clear/-enable/-disable/-merge", async () => {
  await using s = await setup();
  const q = s.q;
  const fail = async (cmd: string, args: Record<string, unknown>) =>
    (await q.fails(cmd, args)).desc;
  await q.ok("block-dirty-bitmap-add", { node: "m0", name: "a" });
  await q.ok("block-dirty-bitmap-add", { node: "m0", name: "b", disabled: true });
  await s.write("m0", 0, 512);
  assertEquals(await s.bitmaps(), [bm("b", 0, { recording: false }), bm("a", 65536)]);
  await q.ok("block-dirty-bitmap-enable", { node: "m0", name: "b" });
  await q.ok("block-dirty-bitmap-disable", { node: "m0", name: "a" });
  await s.write("m0", 65536 * 3, 512);
  assertEquals(await s.bitmaps(), [bm("b", 65536), bm("a", 65536, { recording: false })]);
  await q.ok("block-dirty-bitmap-merge", { node: "m0", target: "a", bitmaps: ["b"] });
  assertEquals(await s.bitmaps(), [bm("b", 65536), bm("a", 131072, { recording: false })]);
  await q.ok("block-dirty-bitmap-clear", { node: "m0", name: "a" });
  assertEquals(await s.bitmaps(), [bm("b", 65536), bm("a", 0, { recording: false })]);
  // Sources on another node ({node, name}) must cover the same size.
  await q.ok("block-dirty-bitmap-add", { node: "m1", name: "c" });
  assertEquals(
    await fail("block-dirty-bitmap-merge", {
      node: "m0",
      target: "a",
      bitmaps: [{ node: "m1", name: "c" }],
    }),
    "Bitmaps are of different sizes (destination size is 1048576, source size is 2097152) " +
      "and can't be merged",
  );
  await q.ok("block-dirty-bitmap-merge", {
    node: "m0",
    target: "a",
    bitmaps: ["b", { node: "m0", name: "b" }],
  });
  assertEquals(await s.bitmaps(), [bm("b", 65536), bm("a", 65536, { recording: false })]);
  assertEquals(
    await fail("block-dirty-bitmap-merge", { node: "m0", target: "a", bitmaps: ["nope"] }),
    "Dirty bitmap 'nope' not found",
  );
  assertEquals(
    await fail("block-dirty-bitmap-merge", { node: "m0", target: "nope", bitmaps: ["a"] }),
    "Dirty bitmap 'nope' not found",
  );
  assertEquals(
    await fail("block-dirty-bitmap-merge", {
      node: "m0",
      target: "a",
      bitmaps: [{ node: "zz", name: "b" }],
    }),
    "Node 'zz' not found",
  );
  assertEquals(
    await fail("block-dirty-bitmap-merge", { node: "m0", target: "a", bitmaps: [{ node: "m0" }] }),
    "Parameter 'bitmaps[0].name' is missing",
  );
  assertEquals(
    await fail("block-dirty-bitmap-merge", { node: "m0", target: "a", bitmaps: [5] }),
    "Invalid parameter type for 'null', expected: BlockDirtyBitmapOrStr",
  );
  assertEquals(
    await fail("block-dirty-bitmap-merge", { node: "m0", target: "a", bitmaps: "b" }),
    "Invalid parameter type for 'bitmaps', expected: array",
  );
});

Deno.test("transaction: bitmap actions all or nothing, abort, argument checks, grouped refused", async () => {
  await using s = await setup();
  const q = s.q;
  const tx = (actions: unknown, properties?: unknown) =>
    properties === undefined ? { actions } : { actions, properties };
  const act = (type: string, data: Record<string, unknown>) => ({ type, data });
  const fail = async (args: Record<string, unknown>) => (await q.fails("transaction", args)).desc;

  await q.ok("block-dirty-bitmap-add", { node: "m0", name: "bm0" });
  await s.write("m0", 0, 4096);
  // "Bitmap already exists: bm1" rolls back the whole group: bm2 is gone, bm0 keeps its bits.
  assertEquals(
    await fail(tx([
      act("block-dirty-bitmap-clear", { node: "m0", name: "bm0" }),
      act("block-dirty-bitmap-add", { node: "m0", name: "bm2" }),
      act("block-dirty-bitmap-add", { node: "m0", name: "bm1" }),
      act("block-dirty-bitmap-disable", { node: "m0", name: "bm0" }),
      act("block-dirty-bitmap-add", { node: "m0", name: "bm1" }),
    ])),
    "Bitmap already exists: bm1",
  );
  assertEquals(await s.bitmaps(), [bm("bm0", 65536)]);
  assertEquals(
    await fail(tx([
      act("block-dirty-bitmap-clear", { node: "m0", name: "bm0" }),
      act("abort", {}),
    ])),
    "Transaction aborted using Abort action",
  );
  assertEquals(await s.bitmaps(), [bm("bm0", 65536)]);
  // A removal is held busy until the commit.
  await q.ok("block-dirty-bitmap-add", { node: "m0", name: "bm5" });
  assertEquals(
    await fail(tx([
      act("block-dirty-bitmap-remove", { node: "m0", name: "bm5" }),
      act("block-dirty-bitmap-remove", { node: "m0", name: "bm5" }),
    ])),
    "Bitmap 'bm5' is currently in use by another operation and cannot be used",
  );
  assertEquals(await s.bitmaps(), [bm("bm5", 0), bm("bm0", 65536)]);
  // A merge undone keeps the target's old bits.
  await s.write("m0", 65536 * 4, 1);
  assertEquals(
    await fail(tx([
      act("block-dirty-bitmap-clear", { node: "m0", name: "bm5" }),
      act("block-dirty-bitmap-merge", { node: "m0", target: "bm5", bitmaps: ["bm0"] }),
      act("abort", {}),
    ])),
    "Transaction aborted using Abort action",
  );
  assertEquals(await s.bitmaps(), [bm("bm5", 65536), bm("bm0", 131072)]);

  // A group that succeeds.
  await q.ok(
    "transaction",
    tx([
      act("block-dirty-bitmap-remove", { node: "m0", name: "bm5" }),
      act("block-dirty-bitmap-add", { node: "m0", name: "new", granularity: 4096 }),
      act("block-dirty-bitmap-merge", { node: "m0", target: "new", bitmaps: ["bm0"] }),
      act("block-dirty-bitmap-clear", { node: "m0", name: "bm0" }),
      act("block-dirty-bitmap-disable", { node: "m0", name: "bm0" }),
    ], { "completion-mode": "individual" }),
  );
  assertEquals(await s.bitmaps(), [
    bm("new", 131072, { granularity: 4096 }),
    bm("bm0", 0, { recording: false }),
  ]);
  await q.ok("transaction", tx([act("block-dirty-bitmap-enable", { node: "m0", name: "bm0" })]));
  assertEquals((await s.bitmaps())![1]!.recording, true);
  assertEquals(await q.ok("transaction", tx([])), {});
  assertEquals(await q.ok("transaction", tx([], { "completion-mode": "grouped" })), {});

  // Argument checks, as QEMU words them (nothing applied).
  assertEquals(await fail({}), "Parameter 'actions' is missing");
  assertEquals(
    await fail({ actions: {} }),
    "Invalid parameter type for 'actions', expected: array",
  );
  assertEquals(await fail(tx([5])), "Invalid parameter type for 'actions[0]', expected: object");
  assertEquals(await fail(tx([{ data: {} }])), "Parameter 'actions[0].type' is missing");
  assertEquals(
    await fail(tx([{ type: "bogus", data: {} }])),
    "Parameter 'type' does not accept value 'bogus'",
  );
  assertEquals(await fail(tx([{ type: "abort" }])), "Parameter 'actions[0].data' is missing");
  assertEquals(
    await fail(tx([
      act("block-dirty-bitmap-add", { node: "m0", name: "zz" }),
      act("abort", { x: 1 }),
    ])),
    "Parameter 'actions[1].data.x' is unexpected",
  );
  assertEquals(
    await fail(tx([act("block-dirty-bitmap-add", { node: "m0" })])),
    "Parameter 'actions[0].data.name' is missing",
  );
  assertEquals(
    await fail(tx([
      act("block-dirty-bitmap-merge", { node: "m0", target: "bm0", bitmaps: [{ node: "m0" }] }),
    ])),
    "Parameter 'actions[0].data.bitmaps[0].name' is missing",
  );
  assertEquals(
    await fail(tx([act("block-dirty-bitmap-add", { node: "m0", name: "g" })], {
      "completion-mode": "bad",
    })),
    "Parameter 'completion-mode' does not accept value 'bad'",
  );
  assertEquals(
    await fail(tx([
      act("block-dirty-bitmap-add", { node: "m0", name: "g" }),
      act("abort", {}),
    ], { "completion-mode": "grouped" })),
    "Action 'block-dirty-bitmap-add' does not support Transaction property completion-mode = grouped",
  );
  assertEquals(
    await fail(tx([act("abort", {})], { "completion-mode": "grouped" })),
    "Transaction aborted using Abort action",
  );
  assertEquals(
    await fail(tx([act("blockdev-snapshot", { node: "m0", overlay: "m1" })])),
    "Transaction action 'blockdev-snapshot' is not supported by this daemon",
  );
  assertEquals((await s.bitmaps())!.map((b) => b.name), ["new", "bm0"]);
});
