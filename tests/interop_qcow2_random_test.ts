/**
 * Randomized differential workloads on qcow2, judged by qemu-img: on one open node, writes
 * in flight together (unaligned, across clusters, overlapping ones one after the other),
 * write-zeroes with and without MAY_UNMAP, discards, compressed writes, flushes and reads
 * checked against a model of the disk, with internal snapshots (create, apply, delete),
 * resizes, reopens and `img amend` in between; images of several cluster sizes, refcount
 * widths, both compat levels, extended L2 entries, a backing file longer than the disk (it
 * must not show through what a resize adds) and an external data file. After each run
 * `qemu-img check` finds no error and no leak, `qemu-img compare` finds the model, `qemu-img
 * map` agrees with ours and qemu-img applies every snapshot to what it held. Fixed seeds.
 */
import { Graph, IoVector, type Node, ReqFlags } from "@blockgraph/core";
import { defaultRegistry, type Qcow2Instance } from "@blockgraph/drivers";
import { rng } from "@blockgraph/drivers/conformance";
import { runOurImg } from "./cli_run.ts";
import { expect, must, qemuCheck, run, withDir } from "./interop_qcow2_helpers.ts";

const MIB = 1 << 20;

/** One image shape: qemu-img create options, and what the model needs to know of them. */
interface Shape {
  opts: string;
  size: number;
  cs: number;
  v2?: boolean;
  /** A raw backing file of this size (patterned, with holes). */
  backing?: number;
  dataFile?: boolean;
  seed: number;
}

const SHAPES: Shape[] = [
  { opts: "cluster_size=512,refcount_bits=64", size: 2 * MIB, cs: 512, seed: 11 },
  { opts: "cluster_size=4096,compat=0.10", size: 4 * MIB, cs: 4096, v2: true, seed: 12 },
  { opts: "cluster_size=65536,refcount_bits=1", size: 8 * MIB, cs: 65536, seed: 13 },
  { opts: "cluster_size=65536,preallocation=metadata", size: 8 * MIB, cs: 65536, seed: 14 },
  { opts: "cluster_size=65536,lazy_refcounts=on", size: 8 * MIB, cs: 65536, seed: 15 },
  {
    opts: "cluster_size=65536,extended_l2=on",
    size: 8 * MIB,
    cs: 65536,
    backing: 8 * MIB,
    seed: 16,
  },
  { opts: "cluster_size=4096", size: 4 * MIB, cs: 4096, backing: 6 * MIB, seed: 17 },
  { opts: "cluster_size=65536", size: 8 * MIB, cs: 65536, dataFile: true, seed: 18 },
];

/** The generator of a shape's operations: the conformance suite's, its seed spread. */
function shapeRng(seed: number): (limit: number) => number {
  return rng((seed * 2654435761) >>> 0);
}

/** `n` bytes of one of a few patterns (some compress, some do not). */
function fill(n: number, r: (l: number) => number): Uint8Array {
  const b = new Uint8Array(n);
  if (r(3) === 0) return b.fill(1 + r(255));
  const base = r(256);
  const step = 1 + r(13);
  for (let i = 0; i < n; i++) b[i] = (base + i * step + (i >> 9)) & 0xff;
  return b;
}

function resized(m: Uint8Array, size: number): Uint8Array {
  const n = new Uint8Array(size);
  n.set(m.subarray(0, Math.min(size, m.length)));
  return n;
}

async function open(path: string): Promise<{ graph: Graph; node: Node }> {
  const graph = new Graph({ registry: defaultRegistry() });
  const node = await graph.open(
    { driver: "qcow2", discard: "unmap", file: { filename: path } },
    "t",
  );
  return { graph, node };
}

async function close(h: { graph: Graph; node: Node }): Promise<void> {
  await h.node.unref("t");
  await h.graph.closeAll();
}

async function expectModel(node: Node, model: Uint8Array, off: number, len: number, at: string) {
  const got = new Uint8Array(len);
  await node.read(off, got);
  for (let i = 0; i < len; i++) {
    if (got[i] !== model[off + i]) {
      throw new Error(`${at}: byte ${off + i} reads ${got[i]}, the model has ${model[off + i]}`);
    }
  }
}

/** `qemu-img map --output=json` runs, neighbours that continue each other merged. */
function mapRuns(json: string): string[] {
  const runs: Record<string, unknown>[] = [];
  for (const e of JSON.parse(json) as Record<string, number | boolean>[]) {
    const k: Record<string, unknown> = { ...e };
    const last = runs.at(-1);
    const len = (x: Record<string, unknown>) => x.length as number;
    if (
      last && last.present === k.present && last.data === k.data && last.zero === k.zero &&
      last.depth === k.depth && (last.start as number) + len(last) === k.start &&
      (k.offset === undefined
        ? last.offset === undefined
        : (last.offset as number) + len(last) === k.offset)
    ) {
      last.length = len(last) + len(k);
    } else runs.push(k);
  }
  return runs.map((x) => JSON.stringify(x));
}

interface Snap {
  name: string;
  data: Uint8Array;
}

/** Whether `p` failed because refcounts would overflow (then it changed nothing else). */
async function overflows(p: Promise<void>): Promise<boolean> {
  try {
    await p;
    return false;
  } catch (e) {
    if (!String(e).includes("would exceed the maximum")) throw e;
    return true;
  }
}

/** Runs `ops` random operations on the image at `img`; the model and the snapshots after. */
async function workload(
  img: string,
  shape: Shape,
  start: Uint8Array,
  ops: number,
): Promise<{ model: Uint8Array; snaps: Snap[] }> {
  const r = shapeRng(shape.seed);
  const cs = shape.cs;
  const sc = shape.opts.includes("extended_l2=on") ? cs / 32 : cs;
  let model = start;
  let v2 = !!shape.v2;
  const snaps: Snap[] = [];
  let h = await open(img);
  const pending: Promise<void>[] = [];
  const ranges: [number, number][] = [];
  const drain = async () => {
    await Promise.all(pending.splice(0));
    ranges.length = 0;
  };
  // Ranges of one request in flight never overlap another's (zeroes and discards: whole
  // clusters around them); overlapping ones wait for those in flight.
  const issue = async (s: number, e: number, f: () => Promise<void>) => {
    if (ranges.some(([a, b]) => s < b && a < e)) await drain();
    ranges.push([s, e]);
    pending.push(f());
  };
  const pickOff = (size: number) => {
    const k = r(5);
    if (k === 0) return r(size);
    if (k === 1) return r(Math.floor(size / cs)) * cs;
    if (k === 2) return Math.max(0, Math.min(size - 1, r(size / cs + 1) * cs - 1 - r(600)));
    if (k === 3) return Math.max(0, size - 1 - r(3 * cs));
    return r(Math.floor(size / sc)) * sc;
  };
  const pickLen = (off: number, size: number) => {
    const k = r(4);
    const n = k === 0 ? 1 + r(600) : k === 1 ? (1 + r(4)) * sc : 1 + r(Math.min(3 * cs, 262144));
    return Math.max(1, Math.min(n, size - off));
  };
  try {
    for (let i = 0; i < ops; i++) {
      const size = model.length;
      const node = h.node;
      const q = node.instance as Qcow2Instance;
      const op = r(100);
      const off = pickOff(size);
      const len = pickLen(off, size);
      const around: [number, number] = [
        Math.floor(off / cs) * cs,
        Math.ceil((off + len) / cs) * cs,
      ];
      if (op < 45) {
        const data = fill(len, r);
        model.set(data, off);
        await issue(off, off + len, () => node.write(off, data));
      } else if (op < 58) {
        const flags = r(2) ? ReqFlags.MAY_UNMAP : 0;
        model.fill(0, off, off + len);
        await issue(...around, () => node.pwriteZeroes(off, len, flags));
      } else if (op < 66) {
        // Whole clusters read as zeros after (a last partial one too); a version 2 image
        // with a backing file cannot discard.
        const zs = Math.ceil(off / cs) * cs;
        const ze = off + len === size ? size : Math.floor((off + len) / cs) * cs;
        if (zs < ze && !(v2 && shape.backing)) model.fill(0, zs, ze);
        await issue(...around, () => node.pdiscard(off, len));
      } else if (op < 72 && !shape.dataFile) {
        // A compressed write never overwrites an allocated cluster (EIO, as QEMU).
        const c = r(Math.ceil(size / cs)) * cs;
        const n = Math.min(cs, size - c);
        const data = fill(n, r);
        await issue(c, c + n, async () => {
          try {
            await node.pwritev(c, n, IoVector.of(data), 0, ReqFlags.WRITE_COMPRESSED);
            model.set(data, c);
          } catch (e) {
            if (!String(e).includes("cannot overwrite")) throw e;
          }
        });
      } else if (op < 76) {
        await drain();
        await node.flush();
      } else if (op < 88) {
        await drain();
        await expectModel(node, model, off, len, `operation ${i}`);
      } else {
        await drain();
        const k = r(10);
        if (k < 2 && !shape.dataFile) {
          // Narrow refcounts overflow (EINVAL in QEMU), and nothing changes.
          if (await overflows(q.snapshotCreate(`s${i}`))) continue;
          snaps.push({ name: `s${i}`, data: model.slice() });
        } else if (k === 2 && snaps.length > 0) {
          const s = snaps[r(snaps.length)]!;
          // Failing, the disk has taken the snapshot's size first (QEMU's order too).
          if (await overflows(q.snapshotApply(s.name))) model = resized(model, node.getLength());
          else model = s.data.slice();
          expect(node.getLength() === model.length, `size after applying ${s.name}`);
        } else if (k === 3 && snaps.length > 0) {
          await q.snapshotDelete(snaps.splice(r(snaps.length), 1)[0]!.name);
        } else if (k < 6 && !(v2 && snaps.length > 0)) {
          // Grown parts read zeros, also where the backing file is longer.
          const delta = (1 + r(64)) * 512 * (1 + r(16));
          const ns = r(2) && size - delta > cs
            ? size - delta
            : Math.min(size + delta, 3 * shape.size);
          const fails = v2 && !!shape.backing && ns > Math.ceil(size / cs) * cs;
          try {
            await node.truncate(ns, true, "off");
            expect(!fails, `resize ${size} -> ${ns} should fail`);
            model = resized(model, ns);
          } catch (e) {
            if (!fails) throw e;
          }
          // What a shrink left in the old last cluster shows again where that cluster is
          // shared with a snapshot or compressed, as in QEMU: the model takes it.
          const tail = Math.min(model.length, Math.ceil(size / cs) * cs);
          if (model.length > size && tail > size) {
            const t = new Uint8Array(tail - size);
            await node.read(size, t);
            model.set(t, size);
          }
        } else if (k === 6) {
          await close(h);
          h = await open(img);
        } else if (k === 7) {
          const o = v2 ? "compat=1.1" : ["refcount_bits=16", "lazy_refcounts=on"][r(2)]!;
          await close(h);
          const a = await runOurImg(["amend", "-o", o, img]);
          expect(a.code === 0, `img amend -o ${o}: ${a.err}`);
          if (o === "compat=1.1") v2 = false;
          h = await open(img);
        } else {
          await expectModel(h.node, model, 0, model.length, `operation ${i}, all`);
        }
      }
      if (pending.length >= 1 + r(6)) await drain();
    }
    await drain();
    await expectModel(h.node, model, 0, model.length, "at the end");
  } finally {
    await Promise.allSettled(pending);
    await close(h);
  }
  return { model, snaps };
}

for (const shape of SHAPES) {
  const label = `${shape.opts}${shape.backing ? `, raw backing file of ${shape.backing}` : ""}${
    shape.dataFile ? ", external data file" : ""
  }`;
  Deno.test(`qcow2 interop: random workload with snapshots and resizes (${label})`, () =>
    withDir(async (dir) => {
      const img = `${dir}/w.qcow2`;
      const r = shapeRng(shape.seed * 3);
      const start = new Uint8Array(shape.size);
      const args = ["create", "-q", "-f", "qcow2"];
      if (shape.backing) {
        const base = new Uint8Array(shape.backing);
        for (let o = 0; o < base.length; o += 65536) if (r(4)) base.set(fill(65536, r), o);
        await Deno.writeFile(`${dir}/base.raw`, base);
        start.set(base.subarray(0, shape.size));
        args.push("-b", `${dir}/base.raw`, "-F", "raw");
      }
      const opts = shape.dataFile ? `${shape.opts},data_file=${dir}/w.data` : shape.opts;
      // Half the shapes are made by blockgraph, half by qemu-img.
      const create = [...args, "-o", opts, img, String(shape.size)];
      if (shape.seed % 2) {
        const c = await runOurImg(create, dir);
        expect(c.code === 0, c.err);
      } else await must("qemu-img", create);
      const { model, snaps } = await workload(img, shape, start, 260);

      const check = await qemuCheck(img);
      expect(
        !check.corruptions && !check.leaks && !check["check-errors"],
        `qemu-img check: ${JSON.stringify(check)}`,
      );
      await Deno.writeFile(`${dir}/model.raw`, model);
      await must("qemu-img", ["compare", "-f", "qcow2", "-F", "raw", img, `${dir}/model.raw`]);
      const theirs = mapRuns(await must("qemu-img", ["map", "--output=json", img]));
      const ours = mapRuns((await runOurImg(["map", "--output=json", img])).out);
      const at = theirs.findIndex((x, i) => x !== ours[i]);
      expect(
        at < 0 && theirs.length === ours.length,
        `map: qemu-img ${theirs[at]}, ours ${ours[at]}`,
      );
      const list = await must("qemu-img", ["snapshot", "-l", img]);
      for (const s of snaps) {
        expect(list.includes(` ${s.name} `), `${s.name} in qemu-img snapshot -l:\n${list}`);
        const copy = `${dir}/copy.qcow2`;
        await Deno.copyFile(img, copy);
        await must("qemu-img", ["snapshot", "-a", s.name, copy]);
        await Deno.writeFile(`${dir}/snap.raw`, s.data);
        await must("qemu-img", ["compare", "-f", "qcow2", "-F", "raw", copy, `${dir}/snap.raw`]);
      }
      const r2 = await run("qemu-img", ["check", img]);
      expect(r2.code === 0, r2.out);
    }));
}
