import { deepStrictEqual as assertEquals, ok as assert } from "node:assert";
import type { DeviceOps } from "./device_ops.ts";
import { BlockError } from "./errors.ts";
import type { BlockEvent } from "./events.ts";
import { Perm } from "./permissions.ts";
import { assertRejects, assertThrows, pattern, ramFaults, testGraph } from "./test_util.ts";

const RW = Perm.CONSISTENT_READ | Perm.WRITE;

/** A CD-ROM-like device that records the callbacks it gets. */
function cdrom(): DeviceOps & { calls: string[] } {
  const calls: string[] = [];
  return {
    calls,
    removable: true,
    hasTray: true,
    changeMedia: (loaded) => calls.push(`changeMedia(${loaded})`),
    ejectRequest: (force) => calls.push(`ejectRequest(${force})`),
    resize: () => calls.push("resize"),
  };
}

Deno.test("Backend.read on an empty drive fails with ENOMEDIUM", async () => {
  const g = testGraph();
  const blk = g.createBackend({ name: "cd0" });
  const err = await assertRejects(() => blk.read(0, new Uint8Array(512)), BlockError);
  assertEquals(err.code, "ENOMEDIUM");
  assertThrows(() => blk.getLength(), BlockError, "No medium found");
  await g.closeAll();
});

Deno.test("Backend checks ranges: past the end and negative offsets are EIO", async () => {
  const g = testGraph();
  const n = await g.open({ driver: "ram", size: 4096 }, "t");
  const blk = g.createBackend({ perm: RW });
  await blk.insertRoot(n);
  await n.unref("t");
  for (const [off, len] of [[4096, 1], [4095, 2], [-1, 1], [8192, 0]]) {
    const err = await assertRejects(() => blk.read(off!, new Uint8Array(len!)), BlockError);
    assertEquals(err.code, "EIO", `offset ${off} length ${len}`);
  }
  await blk.read(4096, new Uint8Array(0));
  await blk.write(4095, pattern(1, 7));
  await g.closeAll();
});

Deno.test("Backend without the write permission refuses writes with EPERM", async () => {
  const g = testGraph();
  const n = await g.open({ driver: "ram" }, "t");
  const blk = g.createBackend({ name: "ro0", perm: Perm.CONSISTENT_READ });
  await blk.insertRoot(n);
  await n.unref("t");
  const err = await assertRejects(() => blk.write(0, pattern(512, 1)), BlockError);
  assertEquals(err.code, "EPERM");
  await g.closeAll();
});

Deno.test("Backend tray: open, remove, insert, close; events only on real moves", async () => {
  const g = testGraph();
  const events: BlockEvent[] = [];
  g.events.on("DEVICE_TRAY_MOVED", (e) => events.push(e));
  const dev = cdrom();
  const blk = g.createBackend({ name: "cd0", perm: Perm.CONSISTENT_READ });
  blk.attachDevice("ide0-cd0", dev);
  const disc1 = await g.open({ driver: "ram", "node-name": "disc1" }, "t");
  await assertRejects(
    () => blk.insertMedium(disc1),
    BlockError,
    "Tray of device 'cd0' is not open",
  );
  blk.tray.open();
  blk.tray.open();
  await blk.insertMedium(disc1);
  await assertRejects(() => blk.read(0, new Uint8Array(1)), BlockError, "No medium found");
  blk.tray.close();
  await blk.read(0, new Uint8Array(1));
  blk.tray.lock(true);
  const err = assertThrows(
    () => blk.tray.open(),
    BlockError,
    "Device 'cd0' is locked and force was not specified",
  );
  assertEquals(err.code, "EINPROGRESS");
  assert(!blk.tray.isOpen);
  await assertRejects(() => blk.removeMedium(), BlockError, "Tray of device 'cd0' is not open");
  await blk.eject(true);
  assert(blk.tray.isOpen && !blk.isInserted);
  assertEquals(dev.calls, [
    "changeMedia(false)",
    "changeMedia(true)",
    "ejectRequest(false)",
    "ejectRequest(true)",
    "changeMedia(false)",
  ]);
  assertEquals(events.map((e) => e.data["tray-open"]), [true, false, true]);
  assertEquals(events[0]!.data, { device: "cd0", id: "ide0-cd0", "tray-open": true });
  assert(disc1.isOpen, "the caller still holds disc1");
  await disc1.unref("t");
  await g.closeAll();
});

Deno.test("Backend tray: a disk without removable media refuses tray operations", async () => {
  const g = testGraph();
  const blk = g.createBackend({ name: "vda" });
  blk.attachDevice("virtio0", { removable: false });
  assertThrows(() => blk.tray.open(), BlockError, "Device 'vda' is not removable");
  assertThrows(() => blk.attachDevice("x", {}), BlockError, "already has a device attached");
  await g.closeAll();
});

Deno.test("Backend error policy: stop holds the request until resume, then retries", async () => {
  const g = testGraph();
  const n = await g.open({ driver: "ram", "node-name": "bad" }, "t");
  const blk = g.createBackend({ name: "vdb", perm: RW });
  blk.attachDevice("virtio1", {});
  assertEquals(blk.errorPolicy, { read: "report", write: "enospc" });
  await blk.insertRoot(n);
  await n.unref("t");
  const events: BlockEvent[] = [];
  g.events.on("BLOCK_IO_ERROR", (e) => events.push(e));
  ramFaults.set("bad", "ENOSPC");
  let settled = false;
  const p = blk.write(0, pattern(512, 1)).then(() => (settled = true));
  await new Promise((r) => setTimeout(r, 10));
  assert(!settled, "the request is held, not failed");
  assert(blk.stopped);
  assertEquals(blk.iostatus, "nospace");
  assertEquals(events[0]!.data["action"], "stop");
  assertEquals(events[0]!.data["nospace"], true);
  assertEquals(events[0]!.data["node-name"], "bad");
  // The disk works again; resume retries the held write, which now succeeds.
  ramFaults.delete("bad");
  blk.resume();
  await p;
  assert(settled);
  assertEquals(blk.iostatus, "ok");
  const back = new Uint8Array(512);
  await blk.read(0, back);
  assertEquals(back, pattern(512, 1));
  // EIO under enospc is reported; under ignore it completes as if it had worked.
  ramFaults.set("bad", "EIO");
  const err = await assertRejects(() => blk.write(0, pattern(512, 2)), BlockError);
  assertEquals(err.code, "EIO");
  assertEquals(events.at(-1)!.data["action"], "report");
  blk.setErrorPolicy("report", "ignore");
  await blk.write(0, pattern(512, 2));
  assertEquals(events.at(-1)!.data["action"], "ignore");
  ramFaults.delete("bad");
  await g.closeAll();
});

Deno.test("Backend queues requests during a drained section and serves them afterwards", async () => {
  const g = testGraph();
  const n = await g.open({ driver: "ram", "delay-ms": 5 }, "t");
  const blk = g.createBackend({ perm: RW });
  await blk.insertRoot(n);
  const order: string[] = [];
  const first = blk.write(0, pattern(512, 1)).then(() => order.push("first"));
  let second: Promise<unknown> | null = null;
  await g.drained([n], () => {
    assertEquals(n.inFlight, 0);
    assertEquals(blk.inFlight, 0);
    order.push("drained");
    second = blk.write(512, pattern(512, 2)).then(() => order.push("second"));
    assertEquals(blk.inFlight, 0, "queued requests are not in flight");
  });
  await first;
  await second;
  assertEquals(order, ["first", "drained", "second"]);
  await n.unref("t");
  await g.closeAll();
});

Deno.test("Backend.truncate needs the resize permission and tells the device", async () => {
  const g = testGraph();
  const n = await g.open({ driver: "ram", size: 4096 }, "t");
  const dev = cdrom();
  const blk = g.createBackend({ perm: RW });
  blk.attachDevice("d", dev);
  await blk.insertRoot(n);
  await n.unref("t");
  await assertRejects(() => blk.truncate(8192), BlockError, "did not take the 'resize' permission");
  blk.setPerm(RW | Perm.RESIZE, Perm.ALL);
  await blk.truncate(8192);
  assertEquals(blk.getLength(), 8192);
  assertEquals(dev.calls, ["resize"]);
  await g.closeAll();
});

Deno.test("Backend: requests held by a stop answer ENOMEDIUM once the medium is gone", async () => {
  const g = testGraph();
  const n = await g.open({ driver: "ram", "node-name": "stopper" }, "t");
  const blk = g.createBackend({ name: "vdc", perm: RW });
  blk.setErrorPolicy("report", "stop");
  await blk.insertRoot(n);
  await n.unref("t");
  ramFaults.set("stopper", "EIO");
  const held = blk.write(0, pattern(512, 1));
  await new Promise((r) => setTimeout(r, 5));
  assert(blk.stopped);
  const later = blk.read(0, new Uint8Array(512));
  await g.closeAll();
  ramFaults.delete("stopper");
  assertEquals((await assertRejects(() => held, BlockError)).code, "ENOMEDIUM");
  assertEquals((await assertRejects(() => later, BlockError)).code, "ENOMEDIUM");
  assertEquals(
    (await assertRejects(() => blk.read(0, new Uint8Array(1)), BlockError)).code,
    "ENOMEDIUM",
  );
});

Deno.test("Backend: the ledger keeps the holder of a root edge whose Backend later got a device", async () => {
  const g = testGraph();
  const n = await g.open({ driver: "ram", "node-name": "led" }, "blockdev-add");
  const blk = g.createBackend({ perm: Perm.CONSISTENT_READ });
  await blk.insertRoot(n);
  blk.attachDevice("virtio0", {});
  await blk.removeRoot();
  assertEquals(g.holders(n), [{ holder: "blockdev-add", count: 1 }]);
  await n.unref("blockdev-add");
  await g.closeAll();
});

Deno.test("Backend: errors under rerror/werror=report are events for devices, not for device-less users", async () => {
  const g = testGraph();
  const n = await g.open({ driver: "ram", "node-name": "rep" }, "t");
  const events: BlockEvent[] = [];
  g.events.on("BLOCK_IO_ERROR", (e) => events.push(e));
  const tool = g.createBackend({ perm: RW });
  await tool.insertRoot(n);
  ramFaults.set("rep", "EIO");
  await assertRejects(() => tool.write(0, pattern(512, 1)), BlockError);
  assertEquals(events.length, 0, "an export or a tool reports the error to its caller only");
  await tool.removeRoot();
  const disk = g.createBackend({ name: "vde", perm: RW });
  disk.attachDevice("virtio-disk4", {});
  disk.setErrorPolicy("report", "report");
  await disk.insertRoot(n);
  await assertRejects(() => disk.write(0, pattern(512, 1)), BlockError);
  assertEquals(events.map((e) => [e.data["device"], e.data["action"]]), [["vde", "report"]]);
  ramFaults.delete("rep");
  await n.unref("t");
  await g.closeAll();
});

Deno.test("Backend.preadHost hands the sink the range, counted in flight until it is done", async () => {
  const g = testGraph();
  const n = await g.open({ driver: "ram", "host-fd": 77, align: 512 }, "t");
  const f = await g.open({ driver: "pass", file: { driver: "ram", "host-fd": 78 } }, "t");
  const blk = g.createBackend({ perm: Perm.CONSISTENT_READ });
  await blk.insertRoot(n);
  const calls: number[][] = [];
  let release!: () => void;
  const sink = (fd: number, offset: number, bytes: number) => {
    calls.push([fd, offset, bytes]);
    return new Promise<void>((r) => (release = r));
  };
  const served = blk.preadHost(1024, 2048, sink);
  await Promise.resolve();
  assertEquals(calls, [[77, 1024, 2048]], "the sink has the node's fd and range");
  assertEquals([blk.inFlight, n.inFlight], [1, 1], "in flight while the sink runs");
  // A drain waits for the sink.
  const order: string[] = [];
  const drained = g.drained([n], () => {
    order.push("drained");
    return blk.preadHost(0, 512, sink).then((ok) => order.push(`while drained: ${ok}`));
  });
  await new Promise((r) => setTimeout(r, 10));
  assertEquals(order.length, 0, "the drain waits for the sink");
  order.push("released");
  release();
  assertEquals(await served, true, "served");
  await drained;
  assertEquals(order, ["released", "drained", "while drained: false"]);
  assertEquals(calls.length, 1, "nothing handed out while drained");
  // Not served: unaligned, past the end, through a filter that does not pass it on.
  assertEquals(await blk.preadHost(100, 512, sink), false, "unaligned");
  assertEquals(await blk.preadHost(1 << 20, 512, sink), false, "past the end");
  await blk.removeRoot();
  await blk.insertRoot(f);
  assertEquals(await blk.preadHost(0, 512, sink), false, "a filter without preadHost");
  assertEquals(calls.length, 1, "the sink was not called");
  assertEquals([blk.inFlight, n.inFlight], [0, 0], "nothing left in flight");
  await n.unref("t");
  await f.unref("t");
  await g.closeAll();
});
