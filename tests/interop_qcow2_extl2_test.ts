/**
 * qcow2 extended L2 entries (subclusters) against qemu-img and qemu-io 7.2: images qemu
 * writes read the same in blockgraph and map the same; the same qemu-io commands run by
 * `blockgraph io` leave an image qemu-img checks clean and finds identical; corrupt subcluster
 * bitmaps are reported by `check` as qemu-img reports them.
 *
 * @module
 */

import { deepStrictEqual as assertEquals } from "node:assert";
import { mustOurIo, runOurImg, runOurIo } from "./cli_run.ts";
import { cmds, expect, KIB, must, run, withDir } from "./interop_qcow2_helpers.ts";
import { qemuCreateQcow2 } from "./peer_run.ts";

/** What qemu-io does to the overlays: partial subclusters, zeroes, discards, compression. */
function workload(cs: number, compressed = true): string[] {
  const sc = cs / 32;
  // A compressed write cannot go to an allocated (preallocated) cluster.
  return [
    ...(compressed ? [`write -c -P 4 ${7 * cs} ${cs}`] : []),
    `write -P 1 ${sc / 2} ${sc}`,
    `write -P 2 ${cs + 3 * sc + 100} ${2 * sc}`,
    `write -z ${2 * cs + 4 * sc} ${3 * sc}`,
    `write -P 3 ${3 * cs - 512} ${cs + 1024}`,
    `write -z -u ${5 * cs} ${cs}`,
    `discard ${6 * cs} ${cs}`,
    `write -P 5 ${7 * cs + sc + 7} 33`,
    `write -P 6 ${8 * cs + 31 * sc} ${2 * sc}`,
    `write -P 7 ${cs + 5 * sc} ${sc}`,
  ];
}

/** Makes `base.qcow2` (patterned, `size` bytes) in `dir`. */
async function makeBase(dir: string, size: number): Promise<string> {
  const base = `${dir}/base.qcow2`;
  await must("qemu-img", ["create", "-q", "-f", "qcow2", base, String(size)]);
  await must(
    "qemu-io",
    cmds([`write -P 0x5a 0 ${size}`, `write -z ${size / 2} ${size / 4}`]).concat(base),
  );
  return base;
}

/** Creates an extended-L2 overlay `name` over base.qcow2 with qemu-img. */
async function makeOverlay(dir: string, name: string, cs: number, extra = ""): Promise<string> {
  const path = `${dir}/${name}`;
  await must("qemu-img", [
    "create",
    "-q",
    "-f",
    "qcow2",
    "-o",
    `extended_l2=on,cluster_size=${cs}${extra}`,
    "-b",
    "base.qcow2",
    "-F",
    "qcow2",
    path,
  ]);
  return path;
}

/** The whole guest contents, as `img convert -O raw` by the given tool writes them. */
async function flatten(path: string, ours: boolean): Promise<Uint8Array> {
  const out = `${path}.${ours ? "ours" : "qemu"}.raw`;
  if (ours) {
    const r = await runOurImg(["convert", "-O", "raw", path, out]);
    expect(r.code === 0, `blockgraph convert ${path}: ${r.err}`);
  } else await must("qemu-img", ["convert", "-O", "raw", path, out]);
  const data = await Deno.readFile(out);
  await Deno.remove(out);
  return data;
}

function sameBytes(a: Uint8Array, b: Uint8Array, label: string): void {
  expect(a.length === b.length, `${label}: lengths ${a.length} and ${b.length}`);
  for (let i = 0; i < a.length; i++) {
    if (a[i] !== b[i]) throw new Error(`${label}: first difference at byte ${i}`);
  }
}

/** `map --output=json` lines without host offsets (where each tool put clusters may differ). */
function withoutOffsets(map: string): string {
  return map.replace(/, "offset": \d+/g, "");
}

const SIZES = [16 * KIB, 64 * KIB, 2048 * KIB];

Deno.test("qemu-io's extended-L2 images read and map the same in blockgraph", () =>
  withDir(async (dir) => {
    for (const cs of SIZES) {
      const size = 12 * cs;
      await makeBase(dir, size);
      for (const extra of ["", ",preallocation=metadata"]) {
        const path = await makeOverlay(dir, `q${cs}.qcow2`, cs, extra);
        await must("qemu-io", cmds(workload(cs, extra === "")).concat(path));
        const label = `cluster ${cs}${extra}`;
        sameBytes(await flatten(path, true), await flatten(path, false), `${label}: contents`);
        const mine = await runOurImg(["map", "--output=json", path]);
        assertEquals(mine.out, await must("qemu-img", ["map", "--output=json", path]), label);
        const check = await runOurImg(["check", path]);
        expect(check.code === 0, `${label}: blockgraph check:\n${check.out}${check.err}`);
        await Deno.remove(path);
      }
      await Deno.remove(`${dir}/base.qcow2`);
    }
  }));

Deno.test("blockgraph io on extended-L2 images: qemu-img check is clean and compare agrees", () =>
  withDir(async (dir) => {
    for (const cs of SIZES) {
      const size = 12 * cs;
      await makeBase(dir, size);
      const theirs = await makeOverlay(dir, `q${cs}.qcow2`, cs);
      const mine = await makeOverlay(dir, `b${cs}.qcow2`, cs);
      const sc = cs / 32;
      // Concurrent writes into one unallocated cluster (and a neighbour), then the workload.
      const aio = [0, 3, 7, 8, 20, 31].map((s) =>
        `aio_write -P ${10 + s} ${9 * cs + s * sc + 13} ${sc - 26}`
      );
      const list = [...aio, "aio_flush", ...workload(cs)];
      await must("qemu-io", cmds(list).concat(theirs));
      await mustOurIo(cmds(list).concat(mine));
      const check = await run("qemu-img", ["check", mine]);
      expect(check.code === 0, `cluster ${cs}: qemu-img check:\n${check.out}`);
      const cmp = await run("qemu-img", ["compare", theirs, mine]);
      expect(cmp.code === 0, `cluster ${cs}: qemu-img compare:\n${cmp.out}`);
      assertEquals(
        withoutOffsets(await must("qemu-img", ["map", "--output=json", mine])),
        withoutOffsets(await must("qemu-img", ["map", "--output=json", theirs])),
        `cluster ${cs}: map`,
      );
      for (const p of [theirs, mine, `${dir}/base.qcow2`]) await Deno.remove(p);
    }
  }));

Deno.test("blockgraph img create -o extended_l2=on makes what qemu-img makes", () =>
  withDir(async (dir) => {
    for (
      const opts of ["extended_l2=on", "extended_l2=on,cluster_size=32k,preallocation=metadata"]
    ) {
      const a = `${dir}/a.qcow2`;
      const b = `${dir}/b.qcow2`;
      await qemuCreateQcow2(a, "5M", opts);
      const r = await runOurImg(["create", "-q", "-f", "qcow2", "-o", opts, b, "5M"]);
      expect(r.code === 0, r.err);
      const info = (p: string) => must("qemu-img", ["info", "--output=json", p]);
      const strip = (s: string) => s.replace(/"(filename|actual-size)": [^,]*,/g, "");
      assertEquals(strip(await info(b)), strip(await info(a)), opts);
      const ours = await runOurImg(["info", "--output=json", a]);
      assertEquals(strip(ours.out), strip(await info(a)), `${opts}: our info`);
      await mustOurIo(cmds(["write -P 9 1000 5000"]).concat(b));
      const check = await run("qemu-img", ["check", b]);
      expect(check.code === 0, `${opts}: qemu-img check:\n${check.out}`);
    }
  }));

/** Sets word `word` (0..3) of the 16-byte L2 entry `index` of L1 entry 0 to `value`. */
async function pokeEntry(path: string, index: number, word: number, value: number): Promise<void> {
  const f = await Deno.open(path, { read: true, write: true });
  try {
    const head = new Uint8Array(48);
    await f.read(head);
    const l1 = Number(new DataView(head.buffer).getBigUint64(40));
    await f.seek(l1, Deno.SeekMode.Start);
    const e = new Uint8Array(8);
    await f.read(e);
    const l2 = Number(new DataView(e.buffer).getBigUint64(0) & 0x00fffffffffffe00n);
    const v = new Uint8Array(4);
    new DataView(v.buffer).setUint32(0, value);
    await f.seek(l2 + index * 16 + word * 4, Deno.SeekMode.Start);
    await f.write(v);
  } finally {
    f.close();
  }
}

Deno.test("corrupt subcluster bitmaps: blockgraph check reports what qemu-img check reports", () =>
  withDir(async (dir) => {
    const path = `${dir}/c.qcow2`;
    // Allocated and zero at once; a compressed cluster with a bitmap; an unallocated cluster
    // with allocated subclusters.
    for (const [index, word, value] of [[0, 2, 1], [1, 3, 1], [2, 3, 4]] as const) {
      await qemuCreateQcow2(path, "1M", "extended_l2=on");
      await must("qemu-io", cmds(["write -P 1 0 4k", "write -c -P 2 64k 64k"]).concat(path));
      await pokeEntry(path, index, word, value);
      const theirs = await run("qemu-img", ["check", path]);
      const mine = await runOurImg(["check", path]);
      assertEquals(mine.out + mine.err, theirs.out, `entry ${index}`);
      assertEquals(mine.code, theirs.code, `entry ${index}: status`);
      const r = await runOurIo(["-r", "-c", `read ${index * 64}k 4k`, path]);
      expect(r.code !== 0 && r.out.includes("read failed: Input/output error"), r.out);
    }
  }));
