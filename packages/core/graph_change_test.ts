import { deepStrictEqual as assertEquals, ok as assert } from "node:assert";
import { ChildRole } from "./child.ts";
import { BlockError } from "./errors.ts";
import { Perm } from "./permissions.ts";
import { assertRejects, passCounts, pattern, testGraph } from "./test_util.ts";

const RW = Perm.CONSISTENT_READ | Perm.WRITE;

Deno.test("Graph.insertFilter and dropFilter under running I/O are invisible to the Backend's user", async () => {
  const g = testGraph();
  const disk = await g.open(
    { driver: "ram", "node-name": "disk", size: 1 << 20, "delay-ms": 1 },
    "t",
  );
  const blk = g.createBackend({ name: "vda", perm: RW, shared: Perm.ALL });
  await blk.insertRoot(disk);
  await disk.unref("t");
  let stop = false;
  let failures = 0;
  let done = 0;
  const worker = async (id: number) => {
    const buf = pattern(4096, id);
    const back = new Uint8Array(4096);
    for (let i = 0; !stop; i++) {
      const off = ((id * 64 + (i % 64)) % 256) * 4096;
      try {
        buf.fill((id + i) & 0xff);
        await blk.write(off, buf);
        await blk.read(off, back);
        if (back[0] !== ((id + i) & 0xff) || back[4095] !== ((id + i) & 0xff)) failures++;
        done++;
      } catch {
        failures++;
      }
    }
  };
  const workers = [0, 1, 2, 3].map(worker);
  await new Promise((r) => setTimeout(r, 20));
  const filter = await g.insertFilter(disk, { driver: "pass", "node-name": "f1" }, "t");
  assertEquals(blk.node, filter);
  await new Promise((r) => setTimeout(r, 30));
  assert(passCounts.get("f1")! > 0, "requests flow through the inserted filter");
  await g.dropFilter(filter);
  assertEquals(blk.node, disk);
  await filter.unref("t");
  assert(!filter.isOpen);
  const seen = passCounts.get("f1")!;
  await new Promise((r) => setTimeout(r, 20));
  assertEquals(passCounts.get("f1"), seen, "nothing flows through the dropped filter");
  stop = true;
  await Promise.all(workers);
  assertEquals(failures, 0);
  assert(done > 10, `I/O kept running (${done} requests)`);
  await g.closeAll();
});

Deno.test("Graph.attachChild refuses cycles and Graph.setBacking refuses drivers without backing", async () => {
  const g = testGraph();
  const a = await g.open({ driver: "overlay", "node-name": "a", file: { driver: "ram" } }, "t");
  const b = await g.open({
    driver: "overlay",
    "node-name": "b",
    file: { driver: "ram" },
    backing: "a",
  }, "t");
  await assertRejects(
    () => g.setBacking(a, b),
    BlockError,
    "Making 'b' a backing child of 'a' would create a cycle",
  );
  const r = await g.open({ driver: "ram", "node-name": "r" }, "t");
  await assertRejects(
    () => g.setBacking(r, a),
    BlockError,
    "Driver 'ram' of node 'r' does not support backing files",
  );
  await g.setBacking(b, null);
  assertEquals(b.children.map((c) => c.name), ["file"]);
  assertEquals(a.refcount, 1);
  await g.setBacking(b, a);
  assertEquals(b.backing?.node, a);
  assert(b.backing!.role & ChildRole.COW);
  for (const n of [a, b, r]) await n.unref("t");
  await g.closeAll();
});

Deno.test("frozen edges cannot be moved or removed", async () => {
  const g = testGraph();
  const base = await g.open({ driver: "ram", "node-name": "base" }, "t");
  const top = await g.open({
    driver: "overlay",
    "node-name": "top",
    file: { driver: "ram" },
    backing: "base",
  }, "t");
  top.backing!.frozen++;
  await assertRejects(
    () => g.setBacking(top, null),
    BlockError,
    "Cannot change frozen 'backing' link from 'top' to 'base'",
  );
  const other = await g.open({ driver: "ram", "node-name": "other" }, "t");
  await assertRejects(
    () => g.replaceNode(base, other),
    BlockError,
    "Cannot change 'backing' link to 'base'",
  );
  assertEquals(top.backing!.node, base, "the failed replace rolled back");
  top.backing!.frozen--;
  await g.replaceNode(base, other);
  assertEquals(top.backing!.node, other);
  for (const n of [base, top, other]) await n.unref("t");
  await g.closeAll();
});

Deno.test("Graph.append puts a snapshot overlay above a node in every parent", async () => {
  const g = testGraph();
  const base = await g.open({ driver: "ram", "node-name": "base" }, "t");
  const blk = g.createBackend({ name: "vda", perm: RW, shared: Perm.ALL });
  await blk.insertRoot(base);
  await blk.write(0, pattern(4096, 1));
  const overlay = await g.open(
    { driver: "overlay", "node-name": "snap", file: { driver: "ram" } },
    "t",
  );
  await g.append(overlay, base);
  assertEquals(blk.node, overlay);
  assertEquals(overlay.backing!.node, base);
  assertEquals(base.parents.map((c) => c.describe()), ["node 'snap' (as 'backing')"]);
  const back = new Uint8Array(4096);
  await blk.read(0, back);
  assertEquals(back, pattern(4096, 1), "the overlay reads through to the old top");
  await blk.write(0, pattern(512, 2));
  await base.read(0, back);
  assertEquals(back, pattern(4096, 1), "new writes land in the overlay, the old top is unchanged");
  await assertRejects(() => g.append(overlay, base), BlockError, "already has a 'backing' child");
  await overlay.unref("t");
  await base.unref("t");
  await g.closeAll();
});

Deno.test("Graph.reopen changes mutable options, swaps file links and refuses the rest", async () => {
  const g = testGraph();
  const r1 = await g.open({ driver: "ram", "node-name": "r1" }, "t");
  const r2 = await g.open({ driver: "ram", "node-name": "r2" }, "t");
  const f = await g.open({ driver: "pass", "node-name": "f", file: "r1" }, "t");
  await g.reopen(f, { file: "r2", "detect-zeroes": "on" });
  assertEquals(f.file!.node, r2);
  assertEquals(f.flags.detectZeroes, "on");
  assertEquals(r1.refcount, 1);
  await assertRejects(
    () => g.reopen(r1, { size: 5 }),
    BlockError,
    "Cannot change the option 'size'",
  );
  await assertRejects(
    () => g.reopen(f, { "node-name": "g" }),
    BlockError,
    "Cannot change the option 'node-name'",
  );
  await g.reopen(r1, { "read-only": true });
  assert(r1.flags.readOnly);
  const w = g.createBackend({ perm: RW, shared: Perm.ALL });
  await assertRejects(() => w.insertRoot(r1), BlockError, "read-only");
  // Going read-only under a writer is refused and rolled back.
  await w.insertRoot(r2);
  await assertRejects(() => g.reopen(r2, { "read-only": true }), BlockError, "read-only");
  assert(!r2.flags.readOnly);
  for (const n of [r1, r2, f]) await n.unref("t");
  await g.closeAll();
});

Deno.test("concurrent graph changes are checked inside the drained section", async () => {
  const g = testGraph();
  const p = await g.open({ driver: "overlay", "node-name": "p", file: { driver: "ram" } }, "t");
  const a = await g.open({ driver: "ram", "node-name": "a1" }, "t");
  const b = await g.open({ driver: "ram", "node-name": "b1" }, "t");
  const r = await Promise.allSettled([
    g.attachChild(p, a, "extra", ChildRole.DATA),
    g.attachChild(p, b, "extra", ChildRole.DATA),
  ]);
  assertEquals(r.map((x) => x.status).sort(), ["fulfilled", "rejected"]);
  assertEquals(p.children.filter((c) => c.name === "extra").length, 1);
  await Promise.allSettled([g.setBacking(p, a), g.setBacking(p, b)]);
  assertEquals(p.children.filter((c) => c.name === "backing").length, 1);
  for (const n of [p, a, b]) await n.unref("t");
  await g.closeAll();
});

Deno.test("Graph.detachChild refuses a Backend's root edge", async () => {
  const g = testGraph();
  const n = await g.open({ driver: "ram" }, "t");
  const blk = g.createBackend({ name: "vdz", perm: Perm.CONSISTENT_READ });
  await blk.insertRoot(n);
  await assertRejects(
    () => g.detachChild(blk.root!),
    BlockError,
    "only edges between nodes can be detached",
  );
  assert(blk.isInserted);
  await blk.read(0, new Uint8Array(1));
  await n.unref("t");
  await g.closeAll();
});
