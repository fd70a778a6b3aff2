import { deepStrictEqual as assertEquals, ok as assert } from "node:assert";
import { applyAction } from "./run_daemon.ts";
import type { TestQmpClient } from "./testing_qmp_client.ts";
import { startQmpDaemon } from "./testing_qmp_daemon.ts";
import type { Daemon } from "./daemon.ts";

async function setup() {
  const s = await startQmpDaemon("bg-media-");
  const { daemon, q } = s;
  await q.ok("blockdev-add", { driver: "memory", "node-name": "m0", size: 65536 });
  await q.ok("blockdev-add", { driver: "raw", "node-name": "r0", file: "m0", "read-only": true });
  await q.ok("blockdev-add", { driver: "memory", "node-name": "m1", size: 131072 });
  await applyAction(daemon, {
    kind: "drive",
    text: "",
    options: { id: "cd0", name: "drv0", "node-name": "r0" },
  });
  await applyAction(daemon, {
    kind: "drive",
    text: "",
    options: { id: "hd0", "node-name": "m1", removable: "off" },
  });
  return s;
}

function trayEvents(q: TestQmpClient, from = 0) {
  return q.events.slice(from).filter((e) => e.event === "DEVICE_TRAY_MOVED").map((e) =>
    (e.data as Record<string, unknown>)["tray-open"]
  );
}

function medium(d: Daemon, id: string): string | null {
  return d.drives.get(id)!.backend.node?.name ?? null;
}

Deno.test("media commands find drives as QEMU does (device, id, DeviceNotFound)", async () => {
  await using s = await setup();
  const q = s.q;
  assertEquals(await q.fails("blockdev-open-tray"), {
    class: "GenericError",
    desc: "Need exactly one of 'device' and 'id'",
  });
  assertEquals(await q.fails("blockdev-open-tray", { device: "drv0", id: "cd0" }), {
    class: "GenericError",
    desc: "Need exactly one of 'device' and 'id'",
  });
  assertEquals(await q.fails("blockdev-open-tray", { id: "nope" }), {
    class: "DeviceNotFound",
    desc: "Device 'nope' not found",
  });
  assertEquals(await q.fails("eject", { device: "nope" }), {
    class: "DeviceNotFound",
    desc: "Device 'nope' not found",
  });
  for (const cmd of ["blockdev-open-tray", "blockdev-close-tray", "eject"]) {
    assertEquals((await q.fails(cmd, { id: "hd0" })).desc, "Device 'hd0' is not removable");
  }
  assertEquals(
    (await q.fails("blockdev-remove-medium", { id: "hd0" })).desc,
    "Device 'hd0' is not removable",
  );
  assertEquals(trayEvents(q), []);
});

Deno.test("open tray, remove, insert, close: DEVICE_TRAY_MOVED in order, QEMU's refusals", async () => {
  await using s = await setup();
  const q = s.q;
  assertEquals(
    (await q.fails("blockdev-remove-medium", { id: "cd0" })).desc,
    "Tray of device 'cd0' is not open",
  );
  assertEquals(
    (await q.fails("blockdev-insert-medium", { id: "cd0", "node-name": "r0" })).desc,
    "Node 'r0' is already in use",
  );
  await q.ok("blockdev-open-tray", { device: "drv0" });
  assertEquals(q.events.at(-1)!.data, { device: "drv0", id: "cd0", "tray-open": true });
  await q.ok("blockdev-open-tray", { id: "cd0" }); // already open: no event
  assertEquals(trayEvents(q), [true]);
  assertEquals((await q.fails("blockdev-del", { "node-name": "r0" })).desc, "Node r0 is in use");
  assertEquals(
    (await q.fails("blockdev-insert-medium", { id: "cd0", "node-name": "m0" })).desc,
    "There already is a medium in the device",
  );
  await q.ok("blockdev-remove-medium", { id: "cd0" });
  await q.ok("blockdev-remove-medium", { id: "cd0" }); // empty: nothing to do
  assertEquals(medium(s.daemon, "cd0"), null);
  const blocks = await q.ok("query-block") as Record<string, unknown>[];
  const cd = blocks.find((b) => b.qdev === "cd0")!;
  assertEquals([cd.tray_open, "inserted" in cd], [true, false]);
  assertEquals(
    (await q.fails("blockdev-insert-medium", { id: "cd0", "node-name": "zz" })).desc,
    "Node 'zz' not found",
  );
  await q.ok("blockdev-insert-medium", { id: "cd0", "node-name": "r0" });
  assertEquals(medium(s.daemon, "cd0"), "r0");
  await q.ok("blockdev-close-tray", { id: "cd0" });
  await q.ok("blockdev-close-tray", { id: "cd0" }); // already closed: no event
  assertEquals(trayEvents(q), [true, false]);
  assertEquals(
    (await q.fails("blockdev-insert-medium", { id: "cd0", "node-name": "m0" })).desc,
    "Tray of the device is not open",
  );
  // The monitor still owns r0 after removal and may delete it then.
  await q.ok("eject", { id: "cd0" });
  assertEquals(trayEvents(q), [true, false, true]);
  assertEquals(medium(s.daemon, "cd0"), null);
  await q.ok("blockdev-del", { "node-name": "r0" });
});

Deno.test("a locked tray: open-tray asks the guest and succeeds, eject needs force", async () => {
  await using s = await setup();
  const q = s.q;
  const drive = s.daemon.drives.get("cd0")!;
  drive.backend.tray.lock(true);
  await q.ok("blockdev-open-tray", { id: "cd0" });
  assertEquals(trayEvents(q), []);
  assert(drive.takePendingEvents().ejectRequested);
  assertEquals(
    (await q.fails("eject", { id: "cd0" })).desc,
    "Device 'cd0' is locked and force was not specified, wait for tray to open and try again",
  );
  assertEquals(medium(s.daemon, "cd0"), "r0");
  await q.ok("eject", { id: "cd0", force: true });
  assertEquals(trayEvents(q), [true]);
  assertEquals(medium(s.daemon, "cd0"), null);
});

Deno.test("blockdev-change-medium opens an image, swaps it in: tray opens then closes", async () => {
  await using s = await setup();
  const q = s.q;
  const img = `${s.dir}/new.raw`;
  await Deno.writeFile(img, new Uint8Array(4096).fill(0xcd));
  assertEquals(
    (await q.fails("blockdev-change-medium", {
      id: "cd0",
      filename: `${s.dir}/nothere.img`,
      format: "raw",
    }))
      .desc,
    `Could not open '${s.dir}/nothere.img': No such file or directory`,
  );
  assertEquals(trayEvents(q), []);
  assertEquals(
    (await q.fails("blockdev-change-medium", { id: "cd0", filename: img, "read-only-mode": "x" }))
      .desc,
    "Parameter 'read-only-mode' does not accept value 'x'",
  );
  await q.ok("blockdev-change-medium", { id: "cd0", filename: img, format: "raw" });
  assertEquals(trayEvents(q), [true, false]);
  const b = s.daemon.drives.get("cd0")!.backend;
  assertEquals(b.node!.driver.name, "raw");
  assertEquals(b.node!.flags.readOnly, true);
  const buf = new Uint8Array(512);
  await b.read(0, buf);
  assertEquals(buf[511], 0xcd);
  // The old medium is the monitor's again; the new one is the drive's alone.
  await q.ok("blockdev-del", { "node-name": "r0" });
  // Changing again with the tray open emits only the close.
  await q.ok("blockdev-open-tray", { id: "cd0" });
  await q.ok("blockdev-change-medium", { device: "drv0", filename: img });
  assertEquals(trayEvents(q), [true, false, true, false]);
  assertEquals(
    (await q.fails("blockdev-change-medium", { id: "hd0", filename: img, format: "raw" })).desc,
    "Device 'hd0' is not removable",
  );
});
