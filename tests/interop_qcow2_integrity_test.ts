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
  qemuRead,
  withDir,
  withImage,
} from "./interop_qcow2_helpers.ts";

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
    await must("qemu-img", [
      "create",
      "-q",
      "-f",
      "qcow2",
      "-o",
      "preallocation=metadata",
      img,
      "5G",
    ]);
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
