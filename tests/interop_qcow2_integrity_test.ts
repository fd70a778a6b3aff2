/**
 * qcow2 data-integrity regressions against qemu-img and qemu-io: refcount structures past
 * 4 GiB, crash windows of snapshot delete and amend (a copy of the file taken at the point a
 * crash would leave it must pass `qemu-img check`), and refcount overflow.
 */
import { type Node } from "@blockgraph/core";
import type { Qcow2Instance } from "@blockgraph/drivers";
import {
  expect,
  expectQemuClean,
  KIB,
  must,
  qemuCheck,
  qemuRead,
  run,
  withDir,
  withImage,
} from "./interop_qcow2_helpers.ts";
import { qemuCreateQcow2 } from "./peer_run.ts";

const GIB = 1024 * 1024 * 1024;

/** The refcount table of a qcow2 file, as exact 64-bit entries. */
async function rawRefTable(path: string): Promise<bigint[]> {
  const f = await Deno.open(path, { read: true });
  try {
    const head = new Uint8Array(64);
    await f.read(head);
    const hv = new DataView(head.buffer);
    const offset = hv.getBigUint64(48);
    const clusters = hv.getUint32(56);
    const table = new Uint8Array(clusters * 65536);
    await f.seek(Number(offset), Deno.SeekMode.Start);
    let got = 0;
    while (got < table.length) got += (await f.read(table.subarray(got))) ?? table.length;
    const tv = new DataView(table.buffer);
    return Array.from({ length: table.length / 8 }, (_, i) => tv.getBigUint64(i * 8));
  } finally {
    f.close();
  }
}

Deno.test("qcow2 interop: refcount blocks past 2 and 4 GiB are used at their offsets after open", () =>
  withDir(async (dir) => {
    const img = `${dir}/big.qcow2`;
    await qemuCreateQcow2(img, "5G", "preallocation=metadata");
    const raw = await rawRefTable(img);
    expect(raw.some((e) => e > 2n ** 32n), `a refcount block lies past 4 GiB: ${raw.slice(0, 4)}`);
    await withImage(img, {}, async (node: Node, q: Qcow2Instance) => {
      const table = q.image.refcounts.table;
      for (let i = 0; i < raw.length; i++) {
        expect(BigInt(table[i]!) === raw[i], `refcount table entry ${i}: ${table[i]} != ${raw[i]}`);
      }
      await node.truncate(6 * GIB, true, "off");
      await node.write(5.5 * GIB, new Uint8Array(64 * KIB).fill(0x5a));
    });
    await expectQemuClean(img, "after a write past 5 GiB");
    await qemuRead(img, 5.5 * GIB, 64 * KIB, 0x5a);
  }));

/** Copies the image file after every metadata write of `kind` at `at` (any offset: null). */
function crashCopies(q: Qcow2Instance, path: string, kind: string, at: number | null): string[] {
  const image = q.image;
  const orig = image.write.bind(image);
  const copies: string[] = [];
  image.write = async (k, offset, buf) => {
    await orig(k, offset, buf);
    if (k === kind && (at === null || offset === at)) {
      const copy = `${path}.crash${copies.length}`;
      Deno.copyFileSync(path, copy);
      copies.push(copy);
    }
  };
  return copies;
}

Deno.test("qcow2 interop: a crash in snapshot delete leaves no COPIED flag on a shared cluster", () =>
  withDir(async (dir) => {
    const img = `${dir}/d.qcow2`;
    await must("qemu-img", ["create", "-q", "-f", "qcow2", img, "64M"]);
    let copies: string[] = [];
    await withImage(img, {}, async (node, q) => {
      await node.write(0, new Uint8Array(64 * KIB).fill(0x11));
      await q.snapshotCreate("s1");
      await node.flush();
      copies = crashCopies(q, img, "active L2 table", null);
      await q.snapshotDelete("s1");
    });
    expect(copies.length > 0, "snapshot delete wrote an L2 table");
    for (const c of copies) {
      // A flag still clear on a cluster whose refcount is one is safe (QEMU repairs it);
      // one set on a cluster that is still shared would let a write change the snapshot.
      const errors = (await run("qemu-img", ["check", c])).out.split("\n")
        .filter((l) => l.startsWith("ERROR"));
      const unsafe = errors.filter((l) => !/^ERROR OFLAG_COPIED .* refcount=1$/.test(l));
      expect(unsafe.length === 0, `${c}: ${unsafe.join(" | ")}`);
    }
    await expectQemuClean(img, "after delete");
    await qemuRead(img, 0, 64 * KIB, 0x11);
  }));

Deno.test("qcow2 interop: a crash in amend refcount_bits leaves the old or the new structure", () =>
  withDir(async (dir) => {
    for (const bits of [1, 8, 64]) {
      const img = `${dir}/a${bits}.qcow2`;
      await must("qemu-img", ["create", "-q", "-f", "qcow2", img, "64M"]);
      await must("qemu-io", [
        "-f",
        "qcow2",
        "-c",
        "write -P 1 0 1M",
        "-c",
        "write -c -P 2 2M 64k",
        img,
      ]);
      let copies: string[] = [];
      await withImage(img, {}, async (_node, q) => {
        copies = crashCopies(q, img, "qcow2_header", 48);
        await q.amend({ refcount_bits: bits });
      });
      expect(copies.length > 0, `${bits} bits: amend wrote the refcount table pointer`);
      for (const c of [...copies, img]) {
        const r = await qemuCheck(c);
        expect((r.corruptions ?? 0) === 0, `${c}: qemu-img check ${JSON.stringify(r)}`);
        await qemuRead(c, 0, 1024 * KIB, 1);
        await qemuRead(c, 2048 * KIB, 64 * KIB, 2);
      }
      await expectQemuClean(img, `${bits} bits`);
    }
  }));
