import { deepStrictEqual as assertEquals, ok as assert } from "node:assert";
import { ChildRole } from "./child.ts";
import { BlockError } from "./errors.ts";
import { Perm, permNames } from "./permissions.ts";
import { assertRejects, testGraph } from "./test_util.ts";

const RW = Perm.CONSISTENT_READ | Perm.WRITE;
const SHARE_NO_WRITE = Perm.CONSISTENT_READ | Perm.WRITE_UNCHANGED | Perm.RESIZE;

Deno.test("permNames lists permissions as QEMU does", () => {
  assertEquals(permNames(Perm.CONSISTENT_READ | Perm.WRITE), "consistent read, write");
  assertEquals(permNames(Perm.ALL), "consistent read, write, write unchanged, resize");
});

Deno.test("permissions: a second writer is refused, naming the node, permission and both users", async () => {
  const g = testGraph();
  const n = await g.open({ driver: "ram", "node-name": "disk0" }, "t");
  const a = g.createBackend({ name: "drive0", perm: RW, shared: SHARE_NO_WRITE });
  const b = g.createBackend({ name: "drive1", perm: RW, shared: SHARE_NO_WRITE });
  await a.insertRoot(n);
  const err = await assertRejects(() => b.insertRoot(n), BlockError);
  assertEquals(err.code, "EPERM");
  assertEquals(
    err.message,
    "Permission conflict on node 'disk0': permissions 'write' are both required by block device " +
      "'drive1' (uses node 'disk0' as 'root' child) and unshared by block device 'drive0' (uses " +
      "node 'disk0' as 'root' child). To release it, remove the medium from 'drive0' " +
      "(blockdev-remove-medium) or detach its device",
  );
  // The failed attach left nothing behind.
  assertEquals(n.parents.length, 1);
  assertEquals(n.refcount, 2);
  assert(!b.isInserted);
  // A reader that shares write can join.
  const c = g.createBackend({ name: "drive2", perm: Perm.CONSISTENT_READ, shared: Perm.ALL });
  await c.insertRoot(n);
  // Once drive0 lets go, drive1 can write.
  await a.removeRoot();
  await c.removeRoot();
  await b.insertRoot(n);
  await n.unref("t");
  await g.closeAll();
});

Deno.test("permissions: a writer on a read-only node is refused and nothing changes", async () => {
  const g = testGraph();
  const n = await g.open({
    driver: "pass",
    "node-name": "f0",
    "read-only": true,
    file: { driver: "ram", "node-name": "r0" },
  }, "t");
  assert(g.findNode("r0")!.flags.readOnly, "read-only is inherited by children");
  const blk = g.createBackend({ name: "drive0", perm: RW, shared: Perm.ALL });
  const err = await assertRejects(() => blk.insertRoot(n), BlockError, "Block node is read-only");
  assert(
    err.message.includes("'f0'") && err.message.includes("block device 'drive0'"),
    err.message,
  );
  assert(!blk.isInserted);
  assertEquals(n.parents.length, 0);
  const ro = g.createBackend({ perm: Perm.CONSISTENT_READ, shared: Perm.ALL });
  await ro.insertRoot(n);
  await assertRejects(
    () => Promise.resolve().then(() => ro.setPerm(RW, Perm.ALL)),
    BlockError,
    "read-only",
  );
  assertEquals(ro.perm, Perm.CONSISTENT_READ);
  await n.unref("t");
  await g.closeAll();
});

Deno.test("permissions: format metadata children take write and never share it", async () => {
  const g = testGraph();
  const top = await g.open({
    driver: "overlay",
    "node-name": "ov",
    file: { driver: "ram", "node-name": "ovf" },
  }, "t");
  const file = g.findNode("ovf")!;
  const edge = file.parents[0]!;
  assert(edge.role & ChildRole.METADATA);
  assert(edge.perm & Perm.WRITE, "a writable format takes write on its file");
  assertEquals(edge.shared & Perm.WRITE, 0);
  // So a second writer directly on the file is refused.
  const blk = g.createBackend({ name: "raw0", perm: RW, shared: Perm.ALL });
  await assertRejects(() => blk.insertRoot(file), BlockError, "Permission conflict on node 'ovf'");
  await top.unref("t");
  await g.closeAll();
});
