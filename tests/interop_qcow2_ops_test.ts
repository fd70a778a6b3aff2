/**
 * qcow2's second landing against qemu-img and qemu-io: internal snapshots both ways, check
 * and repair of deliberately corrupted images, resize, compressed writes and amend, each
 * followed by `qemu-img check`.
 */
import { ReqFlags } from "@blockgraph/core";
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
  writeBytes,
} from "./interop_qcow2_helpers.ts";
import { runOurImg } from "./cli_run.ts";
import { qemuCreateQcow2, runPeer } from "./peer_run.ts";

Deno.test("qcow2 interop: our snapshots list, apply and check in qemu-img, and theirs in ours", () =>
  withDir(async (dir) => {
    const img = `${dir}/s.qcow2`;
    await must("qemu-img", ["create", "-q", "-f", "qcow2", img, "4M"]);
    await must("qemu-io", ["-f", "qcow2", "-c", "write -P 1 0 256k", img]);
    await withImage(img, {}, async (node, q) => {
      await q.snapshotCreate("ours");
      await node.write(0, new Uint8Array(64 * KIB).fill(2));
    });
    await expectQemuClean(img, "after our snapshot");
    const list = await must("qemu-img", ["snapshot", "-l", img]);
    expect(/\n1\s+ours\s/.test(list), `qemu-img snapshot -l lists ours:\n${list}`);
    await must("qemu-img", ["snapshot", "-c", "theirs", img]);
    await must("qemu-img", ["snapshot", "-a", "ours", img]);
    await qemuRead(img, 0, 256 * KIB, 1);
    await withImage(img, {}, async (node, q) => {
      const names = q.snapshotList().map((s) => s.name).join(",");
      expect(names === "ours,theirs", `our list: ${names}`);
      await q.snapshotApply("theirs");
      const buf = new Uint8Array(64 * KIB);
      await node.read(0, buf);
      expect(buf.every((b) => b === 2), "theirs reads as written before it");
      await q.snapshotDelete("ours");
    });
    await expectQemuClean(img, "after our apply and delete");
    await qemuRead(img, 0, 64 * KIB, 2);
    const after = await must("qemu-img", ["snapshot", "-l", img]);
    expect(!after.includes("ours") && after.includes("theirs"), `after delete:\n${after}`);
  }));

const CORRUPTIONS: [string, number, number[]][] = [
  // 4 KiB clusters: refcount block at 0x2000 (16-bit entries), L2 table at 0x4000.
  ["leaked cluster", 0x2000 + 6 * 2, [0, 2]],
  ["refcount below references", 0x2000 + 7 * 2, [0, 0]],
  ["OFLAG_COPIED cleared", 0x4000 + 8, [0]],
];

for (const [label, at, bytes] of CORRUPTIONS) {
  Deno.test(`qcow2 interop: check agrees with qemu-img on a ${label}, and -r all repairs it`, () =>
    withDir(async (dir) => {
      const img = `${dir}/c.qcow2`;
      await qemuCreateQcow2(img, "1M", "cluster_size=4096");
      await must("qemu-io", ["-f", "qcow2", "-c", "write -P 1 0 40k", img]);
      await writeBytes(img, at, bytes);
      const theirs = await qemuCheck(img);
      await withImage(img, { "read-only": true }, async (_node, q) => {
        const ours = await q.check("none");
        const got = [ours.corruptions, ours.leaks, ours["check-errors"]].join(",");
        const want = [theirs.corruptions ?? 0, theirs.leaks ?? 0, theirs["check-errors"] ?? 0]
          .join(",");
        expect(got === want, `${label}: ours ${got}, qemu-img ${want}`);
        expect(got !== "0,0,0", `${label}: the edit made a problem`);
      });
      await withImage(img, { "check-open": true }, async (_node, q) => {
        const r = await q.check("all");
        expect(r.corruptions === 0 && r.leaks === 0, `${label}: left ${JSON.stringify(r)}`);
      });
      await expectQemuClean(img, `${label} after our repair`);
      await qemuRead(img, 0, 40 * KIB, 1);
    }));
}

Deno.test("qcow2 interop: resize grows and shrinks like qemu-img resize", () =>
  withDir(async (dir) => {
    const ours = `${dir}/ours.qcow2`;
    const theirs = `${dir}/theirs.qcow2`;
    for (const p of [ours, theirs]) {
      await must("qemu-img", ["create", "-q", "-f", "qcow2", p, "2M"]);
      await must("qemu-io", ["-f", "qcow2", "-c", "write -P 3 0 2M", p]);
    }
    for (const [size, prealloc] of [[6 << 20, "metadata"], [1536 * KIB, "off"]] as const) {
      await withImage(ours, {}, (node) => node.truncate(size, true, prealloc));
      const args = ["resize", "-q", `--preallocation=${prealloc}`, theirs, String(size)];
      if (prealloc === "off") args.splice(2, 1, "--shrink");
      await must("qemu-img", args);
      await expectQemuClean(ours, `ours at ${size}`);
      await must("qemu-img", ["compare", "-q", ours, theirs]);
    }
  }));

Deno.test("qcow2 interop: falloc and full preallocation past the first L2 table fill the file as qemu-img's do", () =>
  withDir(async (dir) => {
    // 4 KiB clusters: an L2 table covers 2 MiB, so 6 MiB of data needs three, written as
    // they are allocated.
    const blocks = async (p: string) => (await Deno.stat(p)).blocks! * 512;
    for (const mode of ["falloc", "full"]) {
      const o = `cluster_size=4096,preallocation=${mode}`;
      const [ours, theirs] = [`${dir}/ours-${mode}.qcow2`, `${dir}/theirs-${mode}.qcow2`];
      const r = await runOurImg(["create", "-q", "-f", "qcow2", "-o", o, ours, "6M"]);
      expect(r.code === 0, `our create: ${r.err}`);
      await must("qemu-img", ["create", "-q", "-f", "qcow2", "-o", o, theirs, "6M"]);
      for (const [grow, from] of [[false, 6 << 20], [true, 7 << 20]] as const) {
        if (grow) {
          const g = await runOurImg(["resize", "-q", `--preallocation=${mode}`, ours, "+7M"]);
          expect(g.code === 0, `our resize: ${g.err}`);
          await must("qemu-img", ["resize", "-q", `--preallocation=${mode}`, theirs, "+7M"]);
        }
        const label = `${mode} ${grow ? "resize" : "create"}`;
        await expectQemuClean(ours, label);
        await must("qemu-img", ["compare", "-q", ours, theirs]);
        const [a, b] = [await blocks(ours), await blocks(theirs)];
        expect(
          a >= from && Math.abs(a - b) <= 256 * KIB,
          `${label}: ours ${a} bytes, qemu-img's ${b}`,
        );
      }
    }
  }));

Deno.test("qcow2 interop: our compressed clusters (zlib, zstd) read back in qemu-io", () =>
  withDir(async (dir) => {
    for (const type of ["zlib", "zstd"]) {
      const img = `${dir}/${type}.qcow2`;
      await qemuCreateQcow2(img, "1M", `compression_type=${type}`);
      await withImage(img, {}, async (node) => {
        for (let i = 0; i < 4; i++) {
          const data = new Uint8Array(64 * KIB).fill(0x10 + i);
          data.fill(0, 1000, 5000);
          await node.write(i * 64 * KIB, data, ReqFlags.WRITE_COMPRESSED);
        }
      });
      await expectQemuClean(img, type);
      const check = await must("qemu-img", ["check", "--output=json", img]);
      expect(check.includes('"compressed-clusters": 4'), `${type}: qemu-img check:\n${check}`);
      for (let i = 0; i < 4; i++) {
        await qemuRead(img, i * 64 * KIB, 1000, 0x10 + i);
        await qemuRead(img, i * 64 * KIB + 1000, 4000, 0);
      }
    }
  }));

Deno.test("qcow2 interop: amend of refcount width and compat passes qemu-img check", () =>
  withDir(async (dir) => {
    const img = `${dir}/a.qcow2`;
    await qemuCreateQcow2(img, "2M", "cluster_size=4096");
    await must("qemu-io", ["-f", "qcow2", "-c", "write -P 5 0 1M", "-c", "write -z 0 8k", img]);
    await withImage(img, {}, (_n, q) => q.amend({ refcount_bits: 4 }));
    await expectQemuClean(img, "4-bit refcounts");
    const info = await must("qemu-img", ["info", img]);
    expect(info.includes("refcount bits: 4"), `qemu-img info:\n${info}`);
    await withImage(img, {}, (_n, q) => q.amend({ refcount_bits: 16, compat: "0.10" }));
    await expectQemuClean(img, "downgraded");
    await qemuRead(img, 0, 8 * KIB, 0);
    await qemuRead(img, 8 * KIB, 1016 * KIB, 5);
  }));

Deno.test("qcow2 interop: a lazy-refcount image left dirty is repaired on our next open", () =>
  withDir(async (dir) => {
    const img = `${dir}/l.qcow2`;
    await qemuCreateQcow2(img, "1M", "lazy_refcounts=on");
    // qemu-io's abort leaves the image dirty, as iotest 039 does.
    await run("qemu-io", ["-f", "qcow2", "-c", "write -P 9 0 128k", "-c", "abort", img]);
    const dirty = await run("qemu-img", ["info", img]);
    expect(dirty.out.includes("dirty flag: true") || dirty.out.includes("corrupt: false"), "info");
    await withImage(img, {}, async () => {});
    await expectQemuClean(img, "after repair on open");
    await qemuRead(img, 0, 128 * KIB, 9);
  }));

/** Images qemu-img 7.2 downgrades to compat=0.10, made by qemu-img and qemu-io in `dir`. */
const DOWNGRADABLE: Record<string, string[][]> = {
  // Lazy refcounts: QEMU makes the image clean, then drops the bit.
  "lazy.qcow2": [
    ["qemu-img", "create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on", "lazy.qcow2", "1M"],
    ["qemu-io", "-c", "write -P 1 0 64k", "-c", "write -z 64k 64k", "lazy.qcow2"],
  ],
  // zstd without compressed clusters: the compression type goes back to zlib.
  "zstd.qcow2": [
    ["qemu-img", "create", "-q", "-f", "qcow2", "-o", "compression_type=zstd", "zstd.qcow2", "1M"],
    ["qemu-io", "-c", "write -P 1 0 64k", "-c", "write -z 128k 64k", "zstd.qcow2"],
  ],
  // Snapshots of the current size, with zero clusters in their tables and in shared ones
  // (one zero cluster with an allocation the first snapshot still reads as data).
  "snap.qcow2": [
    ["qemu-img", "create", "-q", "-f", "qcow2", "snap.qcow2", "1M"],
    ["qemu-io", "-c", "write -P 1 0 128k", "-c", "write -z 256k 64k", "snap.qcow2"],
    ["qemu-img", "snapshot", "-c", "s1", "snap.qcow2"],
    [
      "qemu-io",
      ...["-c", "write -z 0 64k", "-c", "write -P 9 64k 4k", "-c", "write -z 512k 64k"],
      ...["-c", "write -z -u 256k 64k", "snap.qcow2"],
    ],
    ["qemu-img", "snapshot", "-c", "s2", "snap.qcow2"],
    ["qemu-io", "-c", "write -P 3 768k 64k", "-c", "write -z 832k 64k", "snap.qcow2"],
  ],
  // Over a backing file, zero clusters must become clusters of zeros (in snapshots too).
  "over.qcow2": [
    ["qemu-img", "create", "-q", "-f", "qcow2", "base.qcow2", "1M"],
    ["qemu-io", "-c", "write -P 5 0 1M", "base.qcow2"],
    ["qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "over.qcow2"],
    ["qemu-io", "-c", "write -z 0 64k", "-c", "write -P 6 64k 64k", "over.qcow2"],
    ["qemu-img", "snapshot", "-c", "s1", "over.qcow2"],
    ["qemu-io", "-c", "write -z 64k 64k", "-c", "write -z 128k 64k", "over.qcow2"],
  ],
};

for (const [name, steps] of Object.entries(DOWNGRADABLE)) {
  Deno.test(`qcow2 interop: img amend -o compat=0.10 downgrades ${name} as qemu-img 7.2 does, its content and snapshots kept`, () =>
    withDir(async (dir) => {
      for (const [cmd, ...args] of steps) {
        const r = await runPeer(cmd!, args, { cwd: dir });
        expect(r.code === 0, `${cmd} ${args.join(" ")}: ${r.err}`);
      }
      const img = `${dir}/${name}`;
      // What the image and each snapshot read, before.
      await must("qemu-img", ["convert", "-O", "raw", img, `${dir}/active.raw`]);
      const list = await must("qemu-img", ["snapshot", "-l", img]);
      const snaps = [...list.matchAll(/^\d+\s+(\S+)\s/gm)].map((m) => m[1]!);
      for (const s of snaps) {
        await must("qemu-img", ["convert", "-l", s, "-O", "raw", img, `${dir}/${s}.raw`]);
      }
      const r = await runOurImg(["amend", "-o", "compat=0.10", img]);
      expect(r.code === 0 && r.out === "" && r.err === "", `amend: ${r.code} ${r.err}`);
      const info = await must("qemu-img", ["info", img]);
      expect(info.includes("compat: 0.10"), `qemu-img info:\n${info}`);
      await expectQemuClean(img, "downgraded");
      await must("qemu-img", ["compare", "-f", "qcow2", "-F", "raw", img, `${dir}/active.raw`]);
      for (const s of snaps) {
        await Deno.copyFile(img, `${dir}/applied.qcow2`);
        await must("qemu-img", ["snapshot", "-a", s, `${dir}/applied.qcow2`]);
        await must("qemu-img", ["compare", "-F", "raw", `${dir}/applied.qcow2`, `${dir}/${s}.raw`]);
      }
    }));
}

Deno.test("qcow2 interop: img amend -o compat=0.10 refuses what qemu-img 7.2 refuses, in its words", () =>
  withDir(async (dir) => {
    const q = (...args: string[]) => must("qemu-img", args);
    await q("create", "-q", "-f", "qcow2", "-o", "compression_type=zstd", `${dir}/zc.qcow2`, "1M");
    await must("qemu-io", ["-c", "write -c -P 1 0 64k", `${dir}/zc.qcow2`]);
    await q("create", "-q", "-f", "qcow2", `${dir}/grown.qcow2`, "1M");
    await q("snapshot", "-c", "s1", `${dir}/grown.qcow2`);
    await q("resize", "-q", `${dir}/grown.qcow2`, "2M");
    await q("create", "-q", "-f", "qcow2", "-o", "refcount_bits=8", `${dir}/r8.qcow2`, "1M");
    for (
      const [image, opts] of [["zc", "compat=0.10"], ["grown", "compat=0.10"], [
        "r8",
        "compat=0.10",
      ]]
    ) {
      await Deno.copyFile(`${dir}/${image}.qcow2`, `${dir}/theirs.qcow2`);
      const theirs = await runPeer("qemu-img", ["amend", "-o", opts!, `${dir}/theirs.qcow2`]);
      const mine = await runOurImg(["amend", "-o", opts!, `${dir}/${image}.qcow2`]);
      const norm = (s: string) => s.replaceAll(`${dir}/theirs.qcow2`, `${dir}/${image}.qcow2`);
      expect(
        mine.code === theirs.code && mine.err === norm(theirs.err) && mine.out === theirs.out,
        `${image}: ours ${mine.code} ${mine.err} / qemu-img ${theirs.code} ${theirs.err}`,
      );
      await expectQemuClean(`${dir}/${image}.qcow2`, `${image} after a refused downgrade`);
    }
  }));

Deno.test("qcow2 interop: img amend -o size=2M resizes to 2 MiB as qemu-img amend does", () =>
  withDir(async (dir) => {
    const img = `${dir}/s.qcow2`;
    await qemuCreateQcow2(img, "1M", "cluster_size=65536");
    await must("qemu-io", ["-f", "qcow2", "-c", "write -P 4 0 64k", img]);
    const r = await runOurImg(["amend", "-o", "size=2M", img]);
    expect(r.code === 0, `amend: ${r.err}`);
    const info = await must("qemu-img", ["info", img]);
    expect(info.includes("virtual size: 2 MiB"), `qemu-img info:\n${info}`);
    await expectQemuClean(img, "resized");
    await qemuRead(img, 0, 64 * KIB, 4);
  }));

Deno.test("qcow2 interop: img amend -o size= resizes as img resize does: zeros over a longer backing file, and a v2 image with snapshots refused", () =>
  withDir(async (dir) => {
    const base = `${dir}/base.raw`;
    await must("qemu-img", ["create", "-q", "-f", "raw", base, "8M"]);
    await must("qemu-io", ["-f", "raw", "-c", "write -P 0x55 0 8M", base]);
    const top = `${dir}/top.qcow2`;
    await must("qemu-img", ["create", "-q", "-f", "qcow2", "-b", base, "-F", "raw", top, "4M"]);
    const r = await runOurImg(["amend", "-o", "size=6M", top]);
    expect(r.code === 0, `amend: ${r.err}`);
    await qemuRead(top, 4 * 1024 * KIB, 2 * 1024 * KIB, 0);
    await qemuRead(top, 0, 4 * 1024 * KIB, 0x55);
    await expectQemuClean(top, "grown over a longer backing file");
    const v2 = `${dir}/v2.qcow2`;
    await qemuCreateQcow2(v2, "1M", "compat=0.10");
    await must("qemu-img", ["snapshot", "-c", "s", v2]);
    const theirs = `${dir}/theirs.qcow2`;
    await Deno.copyFile(v2, theirs);
    const q = await runPeer("qemu-img", ["amend", "-o", "size=2M", theirs]);
    const mine = await runOurImg(["amend", "-o", "size=2M", v2]);
    expect(
      mine.code === q.code && mine.err === q.err.replaceAll(theirs, v2),
      `v2 with a snapshot: ours ${mine.code} ${mine.err} / qemu-img ${q.code} ${q.err}`,
    );
    await must("qemu-img", ["snapshot", "-a", "s", v2]);
  }));
