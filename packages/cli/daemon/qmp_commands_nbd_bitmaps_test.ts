import { deepStrictEqual as assertEquals, ok as assert } from "node:assert";
import { runPeer } from "../../../tests/peer_run.ts";
import { ensurePeers } from "../../../tests/peers.ts";
import { applyAction } from "./run_daemon.ts";
import { parseDaemonArgs } from "./daemon_options.ts";
import { startQmpDaemon } from "./testing_qmp_daemon.ts";

async function setup() {
  const s = await startQmpDaemon("bg-nbd-bitmap-");
  const { q } = s;
  await q.ok("blockdev-add", { driver: "memory", "node-name": "m0", size: 1 << 20 });
  const sock = `${s.dir}/nbd.sock`;
  await q.ok("nbd-server-start", { addr: { type: "unix", data: { path: sock } } });
  return {
    ...s,
    sock,
  };
}

const BUSY = (n: string) =>
  `Bitmap '${n}' is currently in use by another operation and cannot be used`;

Deno.test("block-export-add bitmaps: QEMU's checks; an exported bitmap is busy until the export goes", async () => {
  await using s = await setup();
  const q = s.q;
  const add = (o: Record<string, unknown>) => ({ type: "nbd", "node-name": "m0", ...o });
  assertEquals(
    (await q.fails("block-export-add", add({ id: "e0", bitmaps: ["nope"] }))).desc,
    "Bitmap 'nope' is not found",
  );
  await q.ok("block-dirty-bitmap-add", { node: "m0", name: "bm0" });
  await q.ok("block-dirty-bitmap-add", { node: "m0", name: "d", disabled: true });
  assertEquals(
    (await q.fails("block-export-add", add({ id: "e0", bitmaps: ["bm0"] }))).desc,
    "Enabled bitmap 'bm0' incompatible with readonly export",
  );
  assertEquals(
    (await q.fails("block-export-add", add({ id: "e0", bitmaps: [{ node: "m0", name: "x" }] })))
      .desc,
    "Dirty bitmap 'x' not found",
  );
  assertEquals(
    (await q.fails("block-export-add", add({ id: "e0", bitmaps: [{ node: "zz", name: "x" }] })))
      .desc,
    "Node 'zz' not found",
  );
  assertEquals(
    (await q.fails("block-export-add", add({ id: "e0", bitmaps: [5] }))).desc,
    "Invalid parameter type for 'null', expected: BlockDirtyBitmapOrStr",
  );
  assertEquals(
    (await q.fails("block-export-add", add({ id: "e0", bitmaps: "bm0" }))).desc,
    "Invalid parameter type for 'bitmaps', expected: array",
  );
  // A disabled bitmap may be exported read-only; {node, name} skips the read-only check.
  await q.ok("block-export-add", add({ id: "e0", name: "ro", bitmaps: ["d"] }));
  await q.ok("block-export-add", add({ id: "e1", name: "rw", writable: true, bitmaps: ["bm0"] }));
  assertEquals(
    (await q.fails(
      "block-export-add",
      add({ id: "e2", name: "x", writable: true, bitmaps: ["bm0"] }),
    ))
      .desc,
    BUSY("bm0"),
  );
  for (const cmd of ["remove", "clear", "enable", "disable"]) {
    assertEquals(
      (await q.fails(`block-dirty-bitmap-${cmd}`, { node: "m0", name: "bm0" })).desc,
      BUSY("bm0"),
    );
  }
  await q.ok("block-dirty-bitmap-add", { node: "m0", name: "bm5" });
  assertEquals(
    (await q.fails("block-dirty-bitmap-merge", { node: "m0", target: "bm5", bitmaps: ["bm0"] }))
      .desc,
    BUSY("bm0"),
  );
  assertEquals(
    (await q.fails("transaction", {
      actions: [
        { type: "block-dirty-bitmap-add", data: { node: "m0", name: "t" } },
        { type: "block-dirty-bitmap-clear", data: { node: "m0", name: "bm0" } },
      ],
    })).desc,
    BUSY("bm0"),
  );
  const nodes = await q.ok("query-named-block-nodes") as Record<string, unknown>[];
  const busy = (nodes[0]!["dirty-bitmaps"] as { name: string; busy: boolean }[])
    .map((b) => [b.name, b.busy]);
  assertEquals(busy, [["bm5", false], ["d", true], ["bm0", true]]);
  await q.ok("block-export-del", { id: "e1" });
  await q.ok("block-export-del", { id: "e0" });
  await q.ok("block-dirty-bitmap-clear", { node: "m0", name: "bm0" });
  await q.ok("block-dirty-bitmap-remove", { node: "m0", name: "d" });
  await q.ok("block-export-add", add({ id: "e3", bitmaps: [{ node: "m0", name: "bm0" }] }));
  assertEquals(
    (await q.fails("block-dirty-bitmap-remove", { node: "m0", name: "bm0" })).desc,
    BUSY("bm0"),
  );
  // nbd-server-stop deletes the export and frees the bitmap.
  await q.ok("nbd-server-stop");
  await q.ok("block-dirty-bitmap-remove", { node: "m0", name: "bm0" });
});

Deno.test("--export bitmaps.N= on the command line (bitmaps= is not a list)", async () => {
  await using s = await setup();
  await s.q.ok("block-dirty-bitmap-add", { node: "m0", name: "bm0" });
  const bad = parseDaemonArgs(["--export", "nbd,id=e0,node-name=m0,writable=on,bitmaps=bm0"]);
  await assertRejectsWith(
    applyAction(s.daemon, bad.actions[0]!),
    "Invalid parameter type for 'bitmaps', expected: array",
  );
  const ok = parseDaemonArgs(["--export", "nbd,id=e0,node-name=m0,writable=on,bitmaps.0=bm0"]);
  await applyAction(s.daemon, ok.actions[0]!);
  assertEquals(s.daemon.nbd!.exportById("e0")!.bitmaps.map((b) => b.name), ["bm0"]);
});

async function assertRejectsWith(p: Promise<unknown>, message: string): Promise<void> {
  try {
    await p;
  } catch (e) {
    assertEquals((e as Error).message, message);
    return;
  }
  throw new Error("expected a rejection");
}

Deno.test("qemu:dirty-bitmap:NAME: nbdinfo --map and qemu-img map show exactly the written ranges", async () => {
  await ensurePeers(["nbdinfo", "qemu-img", "qemu-io"]);
  await using s = await setup();
  const q = s.q;
  await q.ok("block-dirty-bitmap-add", { node: "m0", name: "bm0" });
  await q.ok("block-dirty-bitmap-add", { node: "m0", name: "fine", granularity: 4096 });
  await q.ok("block-export-add", {
    type: "nbd",
    id: "e0",
    "node-name": "m0",
    name: "disk",
    writable: true,
    bitmaps: ["bm0", "fine"],
  });
  const uri = `nbd+unix:///disk?socket=${s.sock}`;
  const io = await runPeer("qemu-io", [
    "-f",
    "raw",
    "-c",
    "write -P 1 4096 4096",
    "-c",
    "write -P 2 300000 70000",
    uri,
  ]);
  assertEquals(io.code, 0, io.err);

  const list = await runPeer("nbdinfo", ["--list", uri]);
  assertEquals(list.code, 0, list.err);
  assert(list.out.includes("qemu:dirty-bitmap:bm0"), list.out);
  assert(list.out.includes("qemu:dirty-bitmap:fine"), list.out);

  const map = async (ctx: string) => {
    const r = await runPeer("nbdinfo", ["--json", `--map=${ctx}`, uri]);
    assertEquals(r.code, 0, r.err);
    return (JSON.parse(r.out) as { offset: number; length: number; type: number }[])
      .map((e) => [e.offset, e.length, e.type]);
  };
  // 64 KiB granules: [0, 64K) and [256K, 384K) hold the written bytes.
  assertEquals(await map("qemu:dirty-bitmap:bm0"), [
    [0, 65536, 1],
    [65536, 196608, 0],
    [262144, 131072, 1],
    [393216, 655360, 0],
  ]);
  assertEquals(await map("qemu:dirty-bitmap:fine"), [
    [0, 4096, 0],
    [4096, 4096, 1],
    [8192, 290816, 0],
    [299008, 73728, 1],
    [372736, 675840, 0],
  ]);

  // qemu-img reads the bitmap through x-dirty-bitmap: dirty ranges show as holes
  // ("data": false), clean ones as data, as with QEMU's own server.
  const r = await runPeer("qemu-img", [
    "map",
    "--output=json",
    "--image-opts",
    `driver=nbd,server.type=unix,server.path=${s.sock},export=disk,` +
    "x-dirty-bitmap=qemu:dirty-bitmap:bm0",
  ]);
  assertEquals(r.code, 0, r.err);
  const extents = (JSON.parse(r.out) as { start: number; length: number; data: boolean }[])
    .map((e) => [e.start, e.length, e.data]);
  assertEquals(extents, [
    [0, 65536, false],
    [65536, 196608, true],
    [262144, 131072, false],
    [393216, 655360, true],
  ]);

  // Clearing needs the export gone; after it, and a new export, the map is clean.
  assertEquals(
    (await q.fails("block-dirty-bitmap-clear", { node: "m0", name: "bm0" })).desc,
    BUSY("bm0"),
  );
  await q.ok("block-export-del", { id: "e0" });
  await q.ok("block-dirty-bitmap-clear", { node: "m0", name: "bm0" });
  await q.ok("block-export-add", {
    type: "nbd",
    id: "e1",
    "node-name": "m0",
    name: "disk",
    writable: true,
    bitmaps: ["bm0"],
  });
  assertEquals(await map("qemu:dirty-bitmap:bm0"), [[0, 1048576, 0]]);
});
