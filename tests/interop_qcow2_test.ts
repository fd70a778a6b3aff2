/**
 * qcow2 against the real qemu-img and qemu-io: images they write (every cluster size, both
 * compat levels, refcount widths, backing chains, compressed clusters) read identically in
 * blockgraph, and images blockgraph writes pass `qemu-img check` and `qemu-img compare` (random
 * workloads on them: interop_qcow2_random_test.ts).
 */
import { Graph, type Node } from "@blockgraph/core";
import { defaultRegistry } from "@blockgraph/drivers";
import { ensurePeers } from "./peers.ts";
import { qemuCreateQcow2 } from "./peer_run.ts";

const SIZE = 4 * 1024 * 1024;

async function run(cmd: string, args: string[]): Promise<{ code: number; out: string }> {
  const r = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
  const d = new TextDecoder();
  return { code: r.code, out: d.decode(r.stdout) + d.decode(r.stderr) };
}

async function must(cmd: string, args: string[]): Promise<string> {
  const r = await run(cmd, args);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(" ")} failed (${r.code}):\n${r.out}`);
  return r.out;
}

async function withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  await ensurePeers(["qemu-img", "qemu-io"]);
  const dir = await Deno.makeTempDir({ prefix: "blockgraph-qcow2-interop-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** Opens `path` as qcow2 in a fresh graph, runs `fn`, closes everything. */
async function withImage(
  path: string,
  readOnly: boolean,
  fn: (node: Node) => Promise<void>,
): Promise<void> {
  const graph = new Graph({ registry: defaultRegistry() });
  const node = await graph.open(
    { driver: "qcow2", "read-only": readOnly, discard: "unmap", file: { filename: path } },
    "test",
  );
  try {
    await fn(node);
  } finally {
    await node.unref("test");
    await graph.closeAll();
  }
}

async function readNode(node: Node): Promise<Uint8Array> {
  const buf = new Uint8Array(node.getLength());
  await node.read(0, buf);
  return buf;
}

function firstDifference(a: Uint8Array, b: Uint8Array): number {
  if (a.length !== b.length) return Math.min(a.length, b.length);
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return i;
  return -1;
}

/** Reads `path` in blockgraph and compares with `qemu-img convert -O raw` of it. */
async function expectSameAsQemu(dir: string, path: string): Promise<void> {
  const raw = `${dir}/expected.raw`;
  await must("qemu-img", ["convert", "-O", "raw", path, raw]);
  const want = await Deno.readFile(raw);
  await withImage(path, true, async (node) => {
    const got = await readNode(node);
    const at = firstDifference(got, want);
    if (at >= 0) throw new Error(`${path}: blockgraph reads differ from qemu-img at byte ${at}`);
  });
}

const QEMU_IO_WRITES = [
  "write -P 0x11 0 65536",
  "write -P 0x22 1000 3000",
  "write -P 0x33 700000 5000",
  "write -z 131072 131072",
  "write -P 0x44 3000000 70000",
  "discard 3000000 65536",
];

for (
  const opts of [
    "cluster_size=512,compat=0.10",
    "cluster_size=4096,refcount_bits=1",
    "cluster_size=65536",
    "cluster_size=65536,compat=0.10",
    "cluster_size=2M,refcount_bits=64",
    "cluster_size=16384,refcount_bits=8,lazy_refcounts=on",
  ]
) {
  Deno.test(`qcow2 interop: blockgraph reads what qemu-io wrote (${opts})`, () =>
    withDir(async (dir) => {
      const img = `${dir}/a.qcow2`;
      await qemuCreateQcow2(img, String(SIZE), opts);
      for (const c of QEMU_IO_WRITES) await must("qemu-io", ["-f", "qcow2", "-c", c, img]);
      await expectSameAsQemu(dir, img);
    }));
}

Deno.test("qcow2 interop: compressed clusters (zlib, zstd) from qemu-img convert -c read identically", () =>
  withDir(async (dir) => {
    const src = `${dir}/src.raw`;
    const data = new Uint8Array(SIZE);
    for (let i = 0; i < SIZE; i++) data[i] = (i * 7 + (i >> 12)) % 13 === 0 ? i & 0xff : 0x5a;
    data.fill(0, 1 << 20, 2 << 20);
    await Deno.writeFile(src, data);
    // zstd too: each cluster's frame is followed by the next one's, or by padding.
    for (const [cs, type] of [["4096", "zlib"], ["65536", "zlib"], ["65536", "zstd"]]) {
      const img = `${dir}/c${cs}${type}.qcow2`;
      await must("qemu-img", [
        "convert",
        "-c",
        "-O",
        "qcow2",
        "-o",
        `cluster_size=${cs},compression_type=${type}`,
        src,
        img,
      ]);
      await withImage(img, true, async (node) => {
        const at = firstDifference(await readNode(node), data);
        if (at >= 0) {
          throw new Error(`${type}, cluster size ${cs}: compressed read differs at ${at}`);
        }
      });
      // A write into a compressed cluster copies it out; qemu-img check stays clean.
      await withImage(img, false, async (node) => {
        await node.write(5000, new Uint8Array(100).fill(9));
      });
      data.fill(9, 5000, 5100);
      await must("qemu-img", ["check", img]);
      await Deno.writeFile(`${dir}/model.raw`, data);
      await must("qemu-img", ["compare", "-f", "qcow2", "-F", "raw", img, `${dir}/model.raw`]);
      data.set(new Uint8Array(await Deno.readFile(src)).subarray(5000, 5100), 5000);
    }
  }));

Deno.test("qcow2 interop: a backing chain qemu-img made reads identically", () =>
  withDir(async (dir) => {
    const base = `${dir}/base.qcow2`;
    const mid = `${dir}/mid.qcow2`;
    const top = `${dir}/top.qcow2`;
    await must("qemu-img", ["create", "-q", "-f", "qcow2", base, String(SIZE)]);
    await must("qemu-io", ["-f", "qcow2", "-c", "write -P 0xaa 0 4M", base]);
    await must("qemu-img", ["create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", mid]);
    await must("qemu-io", ["-f", "qcow2", "-c", "write -P 0xbb 65536 1000", mid]);
    await must("qemu-io", ["-f", "qcow2", "-c", "write -z 1048576 65536", mid]);
    await must("qemu-img", [
      "create",
      "-q",
      "-f",
      "qcow2",
      "-o",
      "cluster_size=4096",
      "-b",
      "mid.qcow2",
      "-F",
      "qcow2",
      top,
      String(SIZE + 1000000),
    ]);
    await must("qemu-io", ["-f", "qcow2", "-c", "write -P 0xcc 70000 100", top]);
    await expectSameAsQemu(dir, top);
    // COW from the chain in blockgraph, checked by qemu-img.
    await withImage(top, false, async (node) => {
      await node.write(65536 + 500, new Uint8Array(10).fill(0xdd));
      await node.write(SIZE + 10, new Uint8Array(10).fill(0xee));
    });
    await must("qemu-img", ["check", top]);
    await expectSameAsQemu(dir, top);
    const out = await must("qemu-io", ["-f", "qcow2", "-c", "read -P 0xbb 65536 500", top]);
    if (!out.includes("read 500/500")) throw new Error(out);
  }));
