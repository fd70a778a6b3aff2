/**
 * qcow2 overlap checks against qemu-io: an image whose L2 entry for guest cluster 0 was
 * pointed (COPIED, so written in place) at one of its metadata structures: the active L1
 * table, another active L2 table, the refcount table, a refcount block, the snapshot table, a
 * snapshot's L1 table, the bitmap directory. A guest write there must fail the same way in
 * both, with the same messages, and leave the image marked corrupt, as QEMU's default
 * overlap-check template ("cached") does. Ours runs as a process, as qemu-io does: the
 * corruption message is the driver's, on the process's standard error.
 */

import { deepStrictEqual as assertEquals } from "node:assert";
import { must, run, withDir } from "./interop_qcow2_helpers.ts";
import { runPeer } from "./peer_run.ts";

const CS = 65536;

/** The command, run as a process: the corruption message goes to the process's stderr. */
const MAIN = new URL("../packages/cli/main.ts", import.meta.url).pathname;

/** Where an image's structures are, read from its header and tables. */
interface Layout {
  l1: number;
  /** The L2 tables of guest offsets 0 and 512 MiB. */
  l2: [number, number];
  reftable: number;
  refblock: number;
  snapshots: number;
  snapshotL1: number;
  bitmapDir: number;
}

async function layout(path: string): Promise<Layout> {
  const f = await Deno.readFile(path);
  const v = new DataView(f.buffer);
  const u64 = (at: number) => Number(v.getBigUint64(at) & 0x00fffffffffffe00n);
  const l1 = u64(40);
  const reftable = u64(48);
  const snapshots = u64(64);
  // The snapshot table's first entry starts with its L1 table's offset.
  const snapshotL1 = u64(snapshots);
  // Header extensions from the end of the version 3 header (its length at 100).
  let at = v.getUint32(100);
  let bitmapDir = 0;
  while (at + 8 <= CS) {
    const type = v.getUint32(at);
    const len = v.getUint32(at + 4);
    if (type === 0) break;
    // Bitmaps: count, reserved, directory size (u64), directory offset (u64).
    if (type === 0x23852875) bitmapDir = u64(at + 8 + 16);
    at += 8 + Math.ceil(len / 8) * 8;
  }
  return {
    l1,
    l2: [u64(l1), u64(l1 + 8)],
    reftable,
    refblock: u64(reftable),
    snapshots,
    snapshotL1,
    bitmapDir,
  };
}

/** What one tool did: exit code, output (timing lines aside), errors, the corrupt bit after. */
interface Outcome {
  code: number;
  out: string;
  err: string;
  corrupt: boolean;
}

/**
 * Copies `base` for qemu-io and for ours, points guest cluster 0's L2 entry (at `entryAt`) to
 * the cluster at `target`, COPIED (written in place), and runs `io` (the image's path to
 * qemu-io's arguments) in each; their outcomes, qemu-io's first.
 */
async function writeOnto(
  dir: string,
  base: string,
  entryAt: number,
  target: number,
  io: (path: string) => string[],
): Promise<Outcome[]> {
  const results: Outcome[] = [];
  for (const who of ["qemu", "ours"]) {
    const path = `${dir}/${who}.qcow2`;
    await Deno.copyFile(base, path);
    const f = await Deno.open(path, { write: true });
    const entry = new Uint8Array(8);
    new DataView(entry.buffer).setBigUint64(0, (1n << 63n) | BigInt(target));
    await f.seek(entryAt, Deno.SeekMode.Start);
    await f.write(entry);
    f.close();
    const args = io(path);
    const r = who === "qemu"
      ? await runPeer("qemu-io", args)
      : await runPeer(Deno.execPath(), ["run", "-A", MAIN, "io", ...args]);
    const info = await run("qemu-img", ["info", "--output=json", "-U", path]);
    results.push({
      code: r.code,
      out: r.out.replace(/^\S+ \S*, \d+ ops; .*\n/gm, ""),
      err: r.err.replaceAll(path, "IMG"),
      corrupt: /"corrupt": true/.test(info.out),
    });
  }
  return results;
}

Deno.test("qcow2 interop: a guest write pointed at metadata fails and marks the image corrupt, as qemu-io", () =>
  withDir(async (dir) => {
    const base = `${dir}/base.qcow2`;
    await must("qemu-img", ["create", "-q", "-f", "qcow2", base, "1G"]);
    // The snapshot and the bitmap first, so that the data written after is not shared.
    await must("qemu-img", ["snapshot", "-c", "s1", base]);
    await must("qemu-img", ["bitmap", "--add", base, "b0"]);
    await must("qemu-io", [
      "-f",
      "qcow2",
      "-c",
      "write -P 1 0 64k",
      "-c",
      "write -P 1 512M 64k",
      base,
    ]);
    const l = await layout(base);
    const targets: [string, number][] = [
      ["active L1 table", l.l1],
      ["active L2 table", l.l2[1]],
      ["refcount table", l.reftable],
      ["refcount block", l.refblock],
      ["snapshot table", l.snapshots],
      ["inactive L1 table", l.snapshotL1],
      ["bitmap directory", l.bitmapDir],
    ];
    for (const [name, offset] of targets) {
      if (offset === 0 || offset % CS !== 0) throw new Error(`${name}: no cluster (${offset})`);
      const results = await writeOnto(dir, base, l.l2[0], offset, (path) => [
        "-f",
        "qcow2",
        "-c",
        "write -P 2 0 4k",
        path,
      ]);
      assertEquals(results[1], results[0], `a write onto the ${name}`);
      assertEquals(results[0]!.corrupt, true, `${name}: marked corrupt`);
      const said = `Preventing invalid write on metadata (overlaps with ${name})`;
      assertEquals(results[0]!.err.includes(said), true, `${name}: ${results[0]!.err}`);
    }
  }));

Deno.test("qcow2 interop: overlap-check=all also keeps guest writes off a snapshot's L2 table, the default does not, as qemu-io", () =>
  withDir(async (dir) => {
    const base = `${dir}/base.qcow2`;
    await must("qemu-img", ["create", "-q", "-f", "qcow2", base, "1G"]);
    // The snapshot shares the first L2 table; the write after it copies the table, so the
    // old one belongs to the snapshot alone.
    await must("qemu-io", ["-f", "qcow2", "-c", "write -P 1 0 64k", base]);
    await must("qemu-img", ["snapshot", "-c", "s1", base]);
    await must("qemu-io", ["-f", "qcow2", "-c", "write -P 3 0 64k", base]);
    const l = await layout(base);
    const f = await Deno.readFile(base);
    const snapshotL2 = Number(
      new DataView(f.buffer).getBigUint64(l.snapshotL1) & 0x00fffffffffffe00n,
    );
    if (snapshotL2 === 0 || snapshotL2 === l.l2[0]) throw new Error("no L2 table of its own");
    for (const check of ["all", "cached"]) {
      const results = await writeOnto(dir, base, l.l2[0], snapshotL2, (path) => [
        "--image-opts",
        "-c",
        "write -P 2 0 4k",
        `driver=qcow2,file.filename=${path},overlap-check=${check}`,
      ]);
      assertEquals(results[1], results[0], `overlap-check=${check}`);
      assertEquals(results[0]!.corrupt, check === "all", `overlap-check=${check}: corrupt`);
    }
  }));
