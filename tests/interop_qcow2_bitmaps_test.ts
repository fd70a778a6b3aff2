/**
 * Persistent dirty bitmaps in qcow2 against QEMU: bitmaps qemu-img and qemu-io made load in
 * blockgraph with their flags and bits; bitmaps blockgraph stores are listed by qemu-img
 * info, leave qemu-img check clean and export the same dirty ranges through qemu-nbd.
 */

import {
  createDirtyBitmap,
  type DirtyBitmapStore,
  findDirtyBitmap,
  Graph,
  type Node,
  Perm,
} from "@blockgraph/core";
import { defaultRegistry, type Qcow2Instance } from "@blockgraph/drivers";
import { addMonitor, createDaemon } from "../packages/cli/daemon/run_daemon.ts";
import { TestQmpClient } from "../packages/cli/daemon/testing_qmp_client.ts";
import { ensurePeers } from "./peers.ts";
import {
  expect,
  expectQemuClean,
  KIB,
  must,
  qemuCheck,
  run,
  withDir,
} from "./interop_qcow2_helpers.ts";
import { qemuCreateQcow2 } from "./peer_run.ts";

function canStoreBitmapForTest(node: Node, name: string, granularity: number): void {
  (node.instance as unknown as DirtyBitmapStore).canStoreDirtyBitmap!(name, granularity);
}

interface InfoBitmap {
  name: string;
  granularity: number;
  flags: string[];
}

async function qemuBitmaps(path: string): Promise<InfoBitmap[]> {
  const out = await must("qemu-img", ["info", "-U", "--output=json", path]);
  const info = JSON.parse(out);
  return info["format-specific"]?.data?.bitmaps ?? [];
}

async function withNode(
  path: string,
  readOnly: boolean,
  fn: (node: Node, graph: Graph) => Promise<void>,
): Promise<void> {
  const graph = new Graph({ registry: defaultRegistry() });
  const node = await graph.open(
    { driver: "qcow2", "read-only": readOnly, file: { driver: "file", filename: path } },
    "t",
  );
  try {
    await fn(node, graph);
  } finally {
    await node.unref("t");
    await graph.closeAll();
  }
}

async function write(graph: Graph, node: Node, offset: number, bytes: number): Promise<void> {
  const blk = graph.createBackend({ perm: Perm.CONSISTENT_READ | Perm.WRITE, shared: Perm.ALL });
  await blk.insertRoot(node);
  await blk.write(offset, new Uint8Array(bytes).fill(0x3c));
  await blk.removeRoot();
}

/** The dirty ranges qemu-nbd exports for `name` (nbdinfo --map), as [offset, length]. */
async function nbdDirty(path: string, name: string): Promise<[number, number][]> {
  const out = await must("nbdinfo", [
    "--json",
    `--map=qemu:dirty-bitmap:${name}`,
    "--",
    "[",
    "qemu-nbd",
    "-r",
    "-f",
    "qcow2",
    "-B",
    name,
    path,
    "]",
  ]);
  const map = JSON.parse(out) as { offset: number; length: number; type: number }[];
  return map.filter((e) => e.type & 1).map((e) => [e.offset, e.length]);
}

Deno.test("qcow2 bitmaps made by qemu-img load with their flags and bits", async () => {
  await withDir(async (dir) => {
    const img = `${dir}/a.qcow2`;
    await must("qemu-img", ["create", "-q", "-f", "qcow2", img, "4M"]);
    await must("qemu-img", ["bitmap", "--add", "-g", "65536", img, "on"]);
    await must("qemu-img", ["bitmap", "--add", img, "off"]);
    await must("qemu-img", ["bitmap", "--disable", img, "off"]);
    await must("qemu-io", ["-f", "qcow2", "-c", "write 0 64k", "-c", "write 1M 128k", img]);
    await must("qemu-img", ["bitmap", "--add", "-g", "4096", img, "later"]);
    await withNode(img, true, (node) => {
      const on = findDirtyBitmap(node, "on")!;
      const off = findDirtyBitmap(node, "off")!;
      const later = findDirtyBitmap(node, "later")!;
      expect(on.persistent && on.enabled && on.readonly && !on.inconsistent, "on's flags");
      expect(on.granularity === 65536 && on.count === 192 * KIB, `on's bits: ${on.count}`);
      expect(on.hbitmap.get(0) && on.hbitmap.get(1024 * KIB) && !on.hbitmap.get(64 * KIB), "on");
      expect(off.persistent && !off.enabled && off.count === 0, "off's flags and bits");
      expect(later.granularity === 4096 && later.count === 0, "later");
      return Promise.resolve();
    });
    // A read-only open leaves the flags as they were.
    expect((await qemuBitmaps(img)).every((b) => !b.flags.includes("in-use")), "no in-use");
    await withNode(img, false, async (node, graph) => {
      const flags = (await qemuBitmaps(img)).map((b) => b.flags.includes("in-use"));
      expect(flags.every((f) => f), `a read/write open marks them in use: ${flags}`);
      expect(!findDirtyBitmap(node, "on")!.readonly, "writable");
      await write(graph, node, 2048 * KIB, 4096);
    });
    const after = await qemuBitmaps(img);
    expect(
      JSON.stringify(after.map((b) => [b.name, b.flags])) ===
        JSON.stringify([["on", ["auto"]], ["off", []], ["later", ["auto"]]]),
      `stored flags: ${JSON.stringify(after)}`,
    );
    await expectQemuClean(img, "after the blockgraph store");
    expect(
      JSON.stringify(await nbdDirty(img, "on")) ===
        JSON.stringify([[0, 65536], [1024 * KIB, 128 * KIB], [2048 * KIB, 65536]]),
      `on exported: ${JSON.stringify(await nbdDirty(img, "on"))}`,
    );
    expect((await nbdDirty(img, "off")).length === 0, "off stays clean");
    expect(
      JSON.stringify(await nbdDirty(img, "later")) === JSON.stringify([[2048 * KIB, 4096]]),
      "later recorded the write",
    );
  });
});

Deno.test("qcow2 bitmaps blockgraph stores are read back by QEMU", async () => {
  await ensurePeers(["qemu-nbd", "nbdinfo"]);
  await withDir(async (dir) => {
    const img = `${dir}/b.qcow2`;
    await must("qemu-img", ["create", "-q", "-f", "qcow2", img, "8M"]);
    await withNode(img, false, async (node, graph) => {
      canStoreBitmapForTest(node, "bg", 65536);
      const bm = createDirtyBitmap(node, 65536, "bg");
      bm.persistent = true;
      canStoreBitmapForTest(node, "dis", 512);
      const dis = createDirtyBitmap(node, 512, "dis");
      dis.persistent = true;
      dis.set(512, 1024);
      dis.disabled = true;
      await write(graph, node, 100 * KIB, 10);
      await write(graph, node, 4 * 1024 * KIB, 300 * KIB);
    });
    // Added in one session, they are stored newest first (QEMU's order).
    const info = await qemuBitmaps(img);
    expect(
      JSON.stringify(info) ===
        JSON.stringify([
          { flags: [], name: "dis", granularity: 512 },
          { flags: ["auto"], name: "bg", granularity: 65536 },
        ]),
      `qemu-img info: ${JSON.stringify(info)}`,
    );
    await expectQemuClean(img, "after storing");
    await withNode(img, true, async (node) => {
      const r = await (node.instance as Qcow2Instance).check("none");
      expect(r.leaks === 0 && r.corruptions === 0, `blockgraph check: ${JSON.stringify(r)}`);
    });
    expect(
      JSON.stringify(await nbdDirty(img, "bg")) ===
        JSON.stringify([[64 * KIB, 64 * KIB], [4096 * KIB, 320 * KIB]]),
      `bg exported: ${JSON.stringify(await nbdDirty(img, "bg"))}`,
    );
    expect(
      JSON.stringify(await nbdDirty(img, "dis")) === JSON.stringify([[512, 1024]]),
      "dis exported",
    );
    // qemu-img convert --bitmaps copies them.
    const out = `${dir}/converted.qcow2`;
    await must("qemu-img", ["convert", "--bitmaps", "-O", "qcow2", img, out]);
    expect(
      JSON.stringify((await qemuBitmaps(out)).map((b) => b.name)) === '["dis","bg"]',
      "converted bitmaps",
    );
    expect(JSON.stringify(await nbdDirty(out, "dis")) === "[[512,1024]]", "converted dis");
    // QEMU opens it read/write and stores it again; blockgraph reads that back.
    await must("qemu-io", ["-f", "qcow2", "-c", "write 7M 4k", img]);
    await must("qemu-img", ["bitmap", "--remove", img, "dis"]);
    await withNode(img, true, (node) => {
      const bg = findDirtyBitmap(node, "bg")!;
      expect(bg.count === 64 * KIB + 320 * KIB + 64 * KIB, `bg after qemu-io: ${bg.count}`);
      expect(!findDirtyBitmap(node, "dis"), "dis removed");
      return Promise.resolve();
    });
    // Removing in blockgraph drops it from the image at once (as QEMU) and frees the clusters:
    // a copy taken before the close, as a crash would leave it, no longer has it.
    const crashed = `${img}.crashed`;
    await withNode(img, false, async (node) => {
      const bg = findDirtyBitmap(node, "bg")!;
      await (node.instance as unknown as DirtyBitmapStore).dirtyBitmapRemoved!("bg");
      bg.release();
      await Deno.copyFile(img, crashed);
    });
    expect((await qemuBitmaps(crashed)).length === 0, "no bitmaps left before the close");
    expect(((await qemuCheck(crashed)).corruptions ?? 0) === 0, "the copy has no corruption");
    expect((await qemuBitmaps(img)).length === 0, "no bitmaps left");
    await expectQemuClean(img, "after removing");
    const r = await run("qemu-img", ["info", "--output=json", img]);
    expect(!r.out.includes('"bitmaps"'), "no bitmaps in info");
  });
});

Deno.test("qcow2 bitmaps: a crash leaves them in use, so they load inconsistent", async () => {
  await withDir(async (dir) => {
    const img = `${dir}/c.qcow2`;
    const copy = `${dir}/crashed.qcow2`;
    await must("qemu-img", ["create", "-q", "-f", "qcow2", img, "4M"]);
    await must("qemu-img", ["bitmap", "--add", img, "b"]);
    await withNode(img, false, async () => {
      await Deno.copyFile(img, copy);
    });
    await withNode(copy, false, (node) => {
      const b = findDirtyBitmap(node, "b")!;
      expect(b.persistent && b.inconsistent, "inconsistent after the crash");
      expect(b.check(7)?.message === "Bitmap 'b' is inconsistent and cannot be used", "check");
      return Promise.resolve();
    });
    const info = await qemuBitmaps(copy);
    expect(JSON.stringify(info[0]?.flags) === '["in-use","auto"]', `kept in use: ${info}`);
    await expectQemuClean(copy, "the inconsistent bitmap keeps its clusters");
  });
});

Deno.test("qcow2 bitmaps: QEMU's checks for a new persistent bitmap", async () => {
  await withDir(async (dir) => {
    const v2 = `${dir}/v2.qcow2`;
    const v3 = `${dir}/v3.qcow2`;
    await qemuCreateQcow2(v2, "1M", "compat=0.10");
    await must("qemu-img", ["create", "-q", "-f", "qcow2", v3, "1M"]);
    const msg = (node: Node, name: string, g: number): string => {
      try {
        canStoreBitmapForTest(node, name, g);
        return "";
      } catch (e) {
        return (e as Error).message;
      }
    };
    await withNode(v2, false, (node) => {
      expect(
        msg(node, "x", 65536) ===
          `Can't make bitmap 'x' persistent in '${node.name}': ` +
            "Cannot store dirty bitmaps in qcow2 v2 files",
        msg(node, "x", 65536),
      );
      return Promise.resolve();
    });
    await withNode(v3, false, (node) => {
      const pre = `Can't make bitmap 'x' persistent in '${node.name}': `;
      expect(msg(node, "x", 65536) === "", "a fine bitmap");
      expect(msg(node, "x", 256) === pre + "Granularity is under minimum (512 bytes)", "min");
      expect(
        msg(node, "x", 2 ** 32) === pre + "Granularity exceeds maximum (2147483648 bytes)",
        "max",
      );
      expect(
        msg(node, "x".repeat(1024), 65536) ===
          `Can't make bitmap '${"x".repeat(1024)}' persistent in '${node.name}': ` +
            "Name length exceeds maximum (1023 characters)",
        "name",
      );
      return Promise.resolve();
    });
  });
});

Deno.test("qcow2 bitmaps: reopened read-only they are stored, read-write marked in use", async () => {
  await withDir(async (dir) => {
    const img = `${dir}/r.qcow2`;
    await must("qemu-img", ["create", "-q", "-f", "qcow2", img, "4M"]);
    await must("qemu-img", ["bitmap", "--add", img, "b"]);
    await withNode(img, true, async (node, graph) => {
      expect(findDirtyBitmap(node, "b")!.readonly, "read-only at first");
      await graph.reopen(node, { "read-only": false });
      await write(graph, node, 0, 4096);
      expect(!findDirtyBitmap(node, "b")!.readonly, "writable after the first write");
      expect((await qemuBitmaps(img))[0]!.flags.includes("in-use"), "in use on disk");
      await graph.reopen(node, { "read-only": true });
      expect(findDirtyBitmap(node, "b")!.readonly, "read-only again");
      const info = await qemuBitmaps(img);
      expect(JSON.stringify(info[0]!.flags) === '["auto"]', `stored: ${JSON.stringify(info)}`);
    });
    await expectQemuClean(img, "after the reopens");
    expect(JSON.stringify(await nbdDirty(img, "b")) === "[[0,65536]]", "the write recorded");
  });
});

Deno.test("qcow2 bitmaps: QMP block-dirty-bitmap-add persistent=true on a qcow2 node", async () => {
  await withDir(async (dir) => {
    const img = `${dir}/d.qcow2`;
    await must("qemu-img", ["create", "-q", "-f", "qcow2", img, "4M"]);
    const daemon = createDaemon();
    addMonitor(daemon, `${dir}/qmp.sock`);
    const q = await TestQmpClient.connect(`${dir}/qmp.sock`);
    try {
      await q.ok("blockdev-add", {
        driver: "qcow2",
        "node-name": "q0",
        file: { driver: "file", filename: img },
      });
      await q.ok("block-dirty-bitmap-add", { node: "q0", name: "p", persistent: true });
      const long = "n".repeat(1024);
      const bad = await q.fails("block-dirty-bitmap-add", {
        node: "q0",
        name: long,
        persistent: true,
      });
      expect(
        bad.desc ===
          `Can't make bitmap '${long}' persistent in 'q0': Name length exceeds maximum (1023 characters)`,
        bad.desc,
      );
      await daemon.graph.findNode("q0")!.write(1024 * KIB, new Uint8Array(4096).fill(1));
      await q.ok("blockdev-del", { "node-name": "q0" });
    } finally {
      await q.close();
      await daemon.shutdown();
    }
    const info = await qemuBitmaps(img);
    expect(JSON.stringify(info) === '[{"flags":["auto"],"name":"p","granularity":65536}]', "info");
    expect(JSON.stringify(await nbdDirty(img, "p")) === "[[1048576,65536]]", "contents");
    await expectQemuClean(img, "after the daemon stored it");
  });
});

Deno.test("qcow2 bitmaps follow a resize; an inconsistent one refuses it", async () => {
  await withDir(async (dir) => {
    const img = `${dir}/s.qcow2`;
    await must("qemu-img", ["create", "-q", "-f", "qcow2", img, "1M"]);
    await must("qemu-img", ["bitmap", "--add", img, "b"]);
    await withNode(img, false, async (node, graph) => {
      await node.truncate(3 * 1024 * KIB, false, "off");
      await write(graph, node, 2560 * KIB, 4096);
    });
    await expectQemuClean(img, "after the resize");
    // The grown tail is dirty (core's rule), then the write inside it.
    expect(
      JSON.stringify(await nbdDirty(img, "b")) === `[[${1024 * KIB},${2048 * KIB}]]`,
      `resized: ${JSON.stringify(await nbdDirty(img, "b"))}`,
    );
    const copy = `${dir}/crashed.qcow2`;
    await withNode(img, false, () => Deno.copyFile(img, copy));
    await withNode(copy, false, async (node) => {
      const err = await node.truncate(4 * 1024 * KIB, false, "off").then(() => null, (e) => e);
      expect(
        (err as Error | null)?.message === "Bitmap 'b' is inconsistent and cannot be used",
        `refused: ${err}`,
      );
    });
  });
});
