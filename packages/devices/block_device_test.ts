import { deepStrictEqual as assertEquals, ok as assert } from "node:assert";
import { BlockError, Graph, Perm } from "@blockgraph/core";
import { defaultRegistry } from "@blockgraph/drivers";
import { BlockDevice } from "./block_device.ts";

class Recorder extends BlockDevice {
  calls: string[] = [];
  protected override mediaChanged(loaded: boolean): void {
    this.calls.push(`media(${loaded})`);
  }
  protected override ejectRequested(force: boolean): void {
    this.calls.push(`eject(${force})`);
  }
}

Deno.test("BlockDevice records media events until the guest takes them", async () => {
  const g = new Graph({ registry: defaultRegistry() });
  const blk = g.createBackend({ name: "cd0", perm: Perm.CONSISTENT_READ });
  const dev = new Recorder(blk, { id: "ide1-cd0", removable: true });
  assert(!dev.mediumPresent);
  const disc = await g.open({ driver: "memory", size: 4096 }, "t");
  await blk.changeMedium(disc);
  await disc.unref("t");
  assert(dev.mediumPresent);
  assertEquals(dev.calls, ["media(false)", "media(true)"]);
  assertEquals(dev.takePendingEvents(), {
    mediumChanged: true,
    ejectRequested: false,
    resized: false,
  });
  assertEquals(dev.peekPendingEvents().mediumChanged, false);
  blk.tray.lock(true);
  try {
    blk.tray.open();
    throw new Error("a locked tray opened");
  } catch (e) {
    assert(e instanceof BlockError && e.code === "EINPROGRESS");
  }
  assertEquals(dev.takePendingEvents().ejectRequested, true);
  await g.closeAll();
});

Deno.test("BlockDevice holds its Backend: a second device is refused, detach lets go", async () => {
  const g = new Graph({ registry: defaultRegistry() });
  const blk = g.createBackend({ name: "vda" });
  const dev = new BlockDevice(blk, { id: "virtio-disk0", removable: false });
  try {
    new BlockDevice(blk, { id: "other", removable: false });
    throw new Error("a second device attached");
  } catch (e) {
    assert(e instanceof BlockError && e.code === "EBUSY");
  }
  await dev.detach();
  assert(!dev.attached);
  const again = new BlockDevice(blk, { id: "other", removable: false });
  assertEquals(blk.deviceId, "other");
  await again.detach();
  await g.closeAll();
});
