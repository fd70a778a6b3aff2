/**
 * The scenarios of the design history (shared docs: design-history/) as tests, on the real
 * drivers: media change under an attached device, a node outliving the first of its
 * Backends, closeAll with everything attached, a filter inserted and dropped under I/O, and
 * permission conflicts.
 */

import { deepStrictEqual as assertEquals, ok as assert } from "node:assert";
import {
  BlockError,
  type BlockEvent,
  type DeviceOps,
  DriverRegistry,
  Graph,
  Perm,
} from "@blockgraph/core";
import { defaultRegistry } from "@blockgraph/drivers";
import { passCounts, testDrivers } from "../packages/core/test_util.ts";

const RW = Perm.CONSISTENT_READ | Perm.WRITE;
const SHARE_RO = Perm.CONSISTENT_READ | Perm.WRITE_UNCHANGED | Perm.RESIZE;

function graph(): Graph {
  return new Graph({ registry: new DriverRegistry([...defaultRegistry().all(), ...testDrivers]) });
}

function fill(n: number, v: number): Uint8Array {
  return new Uint8Array(n).fill(v);
}

/** A device model that records everything the block layer tells it. */
function device(removable: boolean): DeviceOps & { calls: string[] } {
  const calls: string[] = [];
  return {
    calls,
    removable,
    hasTray: removable,
    changeMedia: (loaded) => calls.push(`changeMedia(${loaded})`),
    ejectRequest: (force) => calls.push(`ejectRequest(${force})`),
    resize: () => calls.push("resize"),
  };
}

async function rejectsWith(p: Promise<unknown>, code: string): Promise<BlockError> {
  try {
    await p;
  } catch (e) {
    assert(e instanceof BlockError, `expected BlockError, got ${e}`);
    assertEquals(e.code, code, e.message);
    return e;
  }
  throw new Error(`expected ${code}`);
}

Deno.test("media change replaces the whole tree under an attached device, which sees only its media callbacks", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/disc1.iso`;
    await Deno.writeFile(path, fill(65536, 0x11));
    const g = graph();
    const events: BlockEvent[] = [];
    g.events.on("DEVICE_TRAY_MOVED", (e) => events.push(e));
    const cd = g.createBackend({ name: "cd0", perm: Perm.CONSISTENT_READ, shared: Perm.ALL });
    const dev = device(true);
    cd.attachDevice("ide1-cd0", dev);
    const disc1 = await g.open({
      driver: "raw",
      "node-name": "disc1",
      "read-only": true,
      file: { driver: "file", "node-name": "disc1-file", filename: path },
    }, "monitor");
    g.addMonitorNode(disc1, "monitor");
    cd.tray.open();
    await cd.insertMedium(disc1);
    cd.tray.close();
    const buf = new Uint8Array(512);
    await cd.read(0, buf);
    assertEquals(buf[0], 0x11);

    // A whole different tree: raw with an offset over an in-memory disc.
    const disc2 = await g.open({
      driver: "raw",
      "node-name": "disc2",
      offset: 4096,
      file: { driver: "memory", "node-name": "disc2-mem", size: 1 << 20 },
    }, "monitor");
    await disc2.file!.node!.write(4096, fill(512, 0x22));
    dev.calls.length = 0;
    await cd.changeMedium(disc2);
    await disc2.unref("monitor");
    await cd.read(0, buf);
    assertEquals(buf[0], 0x22);
    assertEquals(dev.calls, ["changeMedia(false)", "changeMedia(true)"]);
    assertEquals(events.map((e) => e.data["tray-open"]), [true, false, true, false]);
    // The old tree is free of the drive; the monitor still owns it until blockdev-del.
    assertEquals(disc1.parents.length, 0);
    await g.blockdevDel("disc1");
    assertEquals(g.findNode("disc1-file"), undefined, "the old tree closed whole");
    await g.closeAll();
    await rejectsWith(cd.read(0, buf), "ENOMEDIUM");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a node shared by two Backends and by another node's backing edge outlives the Backend deleted first", async () => {
  const g = graph();
  const base = await g.open({
    driver: "raw",
    "node-name": "base",
    "read-only": true,
    file: { driver: "memory", size: 1 << 20 },
  }, "setup");
  const a = g.createBackend({ name: "a", perm: Perm.CONSISTENT_READ, shared: Perm.ALL });
  const b = g.createBackend({ name: "b", perm: Perm.CONSISTENT_READ, shared: Perm.ALL });
  await a.insertRoot(base);
  await b.insertRoot(base);
  const top = await g.open({
    driver: "overlay",
    "node-name": "top",
    file: { driver: "memory", size: 1 << 20 },
    backing: "base",
  }, "setup");
  const c = g.createBackend({ name: "c", perm: RW, shared: SHARE_RO });
  await c.insertRoot(top);
  await top.unref("setup");
  await base.unref("setup");
  assertEquals(base.refcount, 3);
  assertEquals(g.holders(base).map((h) => h.holder).sort(), [
    "block device 'a' (as 'root')",
    "block device 'b' (as 'root')",
    "node 'top' (as 'backing')",
  ]);

  await a.unref();
  assert(base.isOpen, "b and top still hold base");
  assertEquals(base.refcount, 2);
  await c.write(0, fill(512, 5));
  await c.unref();
  assert(!top.isOpen, "top closed with its last Backend");
  assert(base.isOpen, "b still holds base");
  const buf = new Uint8Array(16);
  await b.read(0, buf);
  await b.unref();
  assert(!base.isOpen);
  assertEquals(g.nodes().length, 0);
  await g.closeAll();
});

Deno.test("closeAll with devices attached, monitor-owned nodes, a node shared by two Backends, and requests in flight", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/disk.raw`;
    await Deno.writeFile(path, new Uint8Array(1 << 20));
    const g = graph();
    // A monitor-owned tree under a disk device.
    const disk = await g.open({
      driver: "raw",
      "node-name": "disk0",
      file: { driver: "file", filename: path },
    }, "monitor");
    g.addMonitorNode(disk, "monitor");
    const vda = g.createBackend({ name: "vda", perm: RW, shared: SHARE_RO });
    const vdaDev = device(false);
    vda.attachDevice("virtio-disk0", vdaDev);
    await vda.insertRoot(disk);
    // A slow node shared by two Backends, one with a device, one without.
    const slow = await g.open({
      driver: "null-co",
      "node-name": "slow",
      "latency-ns": 20_000_000,
      "read-zeroes": true,
    }, "setup");
    const s1 = g.createBackend({ perm: Perm.CONSISTENT_READ, shared: Perm.ALL });
    const s2 = g.createBackend({ name: "s2", perm: Perm.CONSISTENT_READ, shared: Perm.ALL });
    s1.attachDevice("scsi0", device(false));
    await s1.insertRoot(slow);
    await s2.insertRoot(slow);
    await slow.unref("setup");

    const inFlight: Promise<unknown>[] = [];
    for (let i = 0; i < 8; i++) {
      inFlight.push(vda.write(i * 4096, fill(4096, i + 1)));
      inFlight.push(s1.read(i * 4096, new Uint8Array(4096)));
      inFlight.push(s2.read(i * 4096, new Uint8Array(4096)));
    }
    assert(slow.inFlight > 0, "requests are in flight when closeAll starts");
    await g.closeAll();
    // Every request that was in flight completed, and its data reached the file.
    const results = await Promise.allSettled(inFlight);
    assertEquals(results.filter((r) => r.status === "rejected").length, 0);
    const onDisk = await Deno.readFile(path);
    for (let i = 0; i < 8; i++) assertEquals(onDisk[i * 4096], i + 1);
    assertEquals(g.nodes().length, 0);
    // The devices still hold their Backends, which answer ENOMEDIUM and never crash.
    await rejectsWith(vda.read(0, new Uint8Array(512)), "ENOMEDIUM");
    await rejectsWith(vda.write(0, new Uint8Array(512)), "ENOMEDIUM");
    await rejectsWith(s1.flush(), "ENOMEDIUM");
    await rejectsWith(s2.read(0, new Uint8Array(1)), "ENOMEDIUM");
    assertEquals(vdaDev.calls, [], "a disk device is not told about media");
    await rejectsWith(g.open({ driver: "null-co" }), "ESHUTDOWN");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a filter inserted above a node and removed again while I/O runs is invisible to the Backend's user", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/disk.raw`;
    await Deno.writeFile(path, new Uint8Array(1 << 20));
    const g = graph();
    const disk = await g.open({
      driver: "raw",
      "node-name": "disk",
      file: { driver: "file", filename: path },
    }, "t");
    const blk = g.createBackend({ name: "vda", perm: RW, shared: SHARE_RO });
    await blk.insertRoot(disk);
    await disk.unref("t");
    let stop = false;
    let errors = 0;
    let count = 0;
    const worker = async (id: number) => {
      const out = new Uint8Array(4096);
      const back = new Uint8Array(4096);
      for (let i = 0; !stop; i++) {
        const off = (id * 32 + (i % 32)) * 4096;
        out.fill((id * 7 + i) & 0xff);
        try {
          await blk.write(off, out);
          await blk.read(off, back);
          if (back[0] !== out[0] || back[4095] !== out[0]) errors++;
          count++;
        } catch {
          errors++;
        }
      }
    };
    const workers = [0, 1, 2, 3].map(worker);
    for (let round = 0; round < 3; round++) {
      await new Promise((r) => setTimeout(r, 15));
      const f = await g.insertFilter(disk, { driver: "pass", "node-name": `filter${round}` }, "t");
      assertEquals(blk.node, f);
      await new Promise((r) => setTimeout(r, 15));
      await g.dropFilter(f);
      await f.unref("t");
      assertEquals(blk.node, disk);
      assert(passCounts.get(`filter${round}`)! > 0);
    }
    stop = true;
    await Promise.all(workers);
    assertEquals(errors, 0);
    assert(count > 20);
    await g.closeAll();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("permission conflicts: two writers, and a writer on a read-only node", async () => {
  const g = graph();
  const disk = await g.open({
    driver: "raw",
    "node-name": "disk",
    file: { driver: "memory", "node-name": "mem", size: 1 << 20 },
  }, "t");
  const w1 = g.createBackend({ name: "w1", perm: RW, shared: SHARE_RO });
  const w2 = g.createBackend({ name: "w2", perm: RW, shared: SHARE_RO });
  await w1.insertRoot(disk);
  const e = await rejectsWith(w2.insertRoot(disk), "EPERM");
  assert(e.message.includes("node 'disk'") && e.message.includes("'write'"), e.message);
  assert(
    e.message.includes("block device 'w1'") && e.message.includes("block device 'w2'"),
    e.message,
  );
  // Writing straight to the raw node's file is refused too: w1 does not share write below.
  const under = g.createBackend({ name: "under", perm: RW, shared: Perm.ALL });
  const e2 = await rejectsWith(under.insertRoot(g.findNode("mem")!), "EPERM");
  assert(e2.message.includes("node 'mem'"), e2.message);

  const ro = await g.open({
    driver: "raw",
    "node-name": "ro",
    "read-only": true,
    file: { driver: "memory", size: 4096 },
  }, "t");
  const e3 = await rejectsWith(w2.insertRoot(ro), "EPERM");
  assert(e3.message.startsWith("Block node is read-only"), e3.message);
  assert(!w2.isInserted);
  await disk.unref("t");
  await ro.unref("t");
  await g.closeAll();
});
