/**
 * qcow2 allocating writes against qemu-io and qemu-img check: the untouched rest of a new
 * cluster reads as zeros even when the host cluster held other data before (freed and
 * reused), both when it is zeroed with write-zeroes (io_uring: fallocate ZERO_RANGE) and when
 * zeros are copied (the threads engine has no fallocate).
 */
import { IoVector } from "@blockgraph/core";
import {
  cmds,
  expect,
  expectQemuClean,
  KIB,
  must,
  qemuRead,
  withDir,
  withImage,
  writeBytes,
} from "./interop_qcow2_helpers.ts";
import { qemuCreateQcow2 } from "./peer_run.ts";

for (const aio of ["io_uring", "threads"]) {
  Deno.test(`qcow2 allocating write into a reused cluster leaves zeros around the data (aio=${aio})`, async () => {
    await withDir(async (dir) => {
      const path = `${dir}/a.qcow2`;
      await must("qemu-img", ["create", "-q", "-f", "qcow2", path, "1M"]);
      const opts = { discard: "unmap", file: { filename: path, aio } };
      await withImage(path, opts, async (node) => {
        await node.write(0, new Uint8Array(64 * KIB).fill(0xaa));
      });
      const map = JSON.parse(await must("qemu-img", ["map", "--output=json", path]));
      const host = map[0].offset as number;
      await withImage(path, opts, (node) => node.pdiscard(0, 64 * KIB));
      // The freed cluster may have been punched: fill it with old data again behind our back.
      await writeBytes(path, host, Array(64 * KIB).fill(0xaa));
      const sizeBefore = (await Deno.stat(path)).size;
      await withImage(path, opts, async (node) => {
        const data = new Uint8Array(4 * KIB).fill(0x55);
        await node.pwritev(260 * KIB, 4 * KIB, IoVector.of(data), 0);
        const back = new Uint8Array(64 * KIB);
        await node.read(256 * KIB, back);
        for (let i = 0; i < back.length; i++) {
          const want = i >= 4 * KIB && i < 8 * KIB ? 0x55 : 0;
          if (back[i] !== want) throw new Error(`byte ${256 * KIB + i}: ${back[i]} != ${want}`);
        }
      });
      const after = JSON.parse(await must("qemu-img", ["map", "--output=json", path]));
      const entry = after.find((e: { start: number }) => e.start === 256 * KIB);
      expect(entry?.offset === host, "the freed cluster was reused");
      expect((await Deno.stat(path)).size === sizeBefore, "the image file did not grow");
      await qemuRead(path, 256 * KIB, 4 * KIB, 0);
      await qemuRead(path, 260 * KIB, 4 * KIB, 0x55);
      await qemuRead(path, 264 * KIB, 56 * KIB, 0);
      await qemuRead(path, 0, 64 * KIB, 0);
      await expectQemuClean(path, aio);
    });
  });
}

/**
 * The same writes through qemu-io and through us, on two fresh images: the files must map
 * the same (QEMU allocates a new L2 table before the data clusters it maps, within one L2
 * table per allocation, so a guest run's data stays contiguous on the host).
 */
for (const cluster of [65536, 4096]) {
  Deno.test(`qcow2 allocating writes lay out the file as QEMU does (${cluster}-byte clusters)`, async () => {
    await withDir(async (dir) => {
      const writes: [number, number, number][] = [
        [0, 256 * KIB, 0x11],
        [3 << 20, 64 * KIB, 0x22],
        [(3 << 20) + 64 * KIB, 4 * KIB, 0x33],
        [9 << 20, 1 << 20, 0x44],
      ];
      const theirs = `${dir}/q.qcow2`;
      const ours = `${dir}/o.qcow2`;
      for (const p of [theirs, ours]) await qemuCreateQcow2(p, "16M", `cluster_size=${cluster}`);
      await must("qemu-io", [
        ...cmds(writes.map(([o, n, v]) => `write -P ${v} ${o} ${n}`)),
        theirs,
      ]);
      await withImage(ours, {}, async (node) => {
        for (const [o, n, v] of writes) await node.write(o, new Uint8Array(n).fill(v));
      });
      const map = async (p: string) => await must("qemu-img", ["map", "--output=json", p]);
      expect(
        (await map(ours)) === (await map(theirs)),
        `map of ours:\n${await map(ours)}\ntheirs:\n${await map(theirs)}`,
      );
      await expectQemuClean(ours, "ours");
    });
  });
}

/**
 * A small write into a new cluster of an overlay whose backing chain holds nothing there:
 * QEMU zeroes the cluster with write-zeroes (`is_zero_cow`) rather than copying the zeros the
 * backing file reads, so the rest of the cluster stays a hole in the host file. Ours must too.
 */
Deno.test("qcow2 allocating write over an unallocated backing range leaves the rest of the cluster a hole, as QEMU", async () => {
  await withDir(async (dir) => {
    const base = `${dir}/base.qcow2`;
    await qemuCreateQcow2(base, "4M", "cluster_size=65536");
    await must("qemu-io", [...cmds(["write -P 9 1M 64k"]), base]);
    const theirs = `${dir}/q.qcow2`;
    const ours = `${dir}/o.qcow2`;
    // 4 KiB in the middle of clusters: over nothing, then over the backing's data (copied).
    const writes: [number, number][] = [[(2 << 20) + 8 * KIB, 4 * KIB], [
      (1 << 20) + 8 * KIB,
      4 * KIB,
    ]];
    for (const p of [theirs, ours]) {
      await must("qemu-img", ["create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", p]);
    }
    await must("qemu-io", [...cmds(writes.map(([o, n]) => `write -P 1 ${o} ${n}`)), theirs]);
    await withImage(ours, {}, async (node) => {
      for (const [o, n] of writes) await node.write(o, new Uint8Array(n).fill(1));
    });
    // The host files' data and holes, as a raw image maps them.
    const host = async (p: string) =>
      await must("qemu-img", ["map", "-f", "raw", "--output=json", p]);
    expect(
      (await host(ours)) === (await host(theirs)),
      `host layout of ours:\n${await host(ours)}\ntheirs:\n${await host(theirs)}`,
    );
    await qemuRead(ours, 2 << 20, 8 * KIB, 0);
    await qemuRead(ours, (1 << 20) + 16 * KIB, 48 * KIB, 9);
    await expectQemuClean(ours, "ours");
  });
});
