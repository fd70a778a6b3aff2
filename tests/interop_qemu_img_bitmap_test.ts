/**
 * `blockgraph img bitmap` and `img convert --bitmaps` against qemu-img 7.2: the same command
 * on two copies of the same images (whose bitmaps qemu-img made) gives the same output,
 * errors and exit status; afterwards `qemu-img info` lists the same bitmaps, `qemu-img
 * check` finds no errors, the stored bits are the same, and so is the image files' layout
 * (`qemu-img map -f raw`).
 *
 * @module
 */

import { deepStrictEqual as assertEquals } from "node:assert";
import { Graph } from "@blockgraph/core";
import { defaultRegistry } from "@blockgraph/drivers";
import { runOurImg } from "./cli_run.ts";
import { ensurePeers } from "./peers.ts";
import { type PeerResult, runPeer } from "./peer_run.ts";

/** The images: bitmaps made by qemu-img with bits qemu-io wrote, one left in use, a raw. */
async function makeImages(dir: string): Promise<void> {
  const q = (...args: string[]) => runPeer("qemu-img", args, { cwd: dir });
  const io = (...args: string[]) => runPeer("qemu-io", args, { cwd: dir });
  await q("create", "-q", "-f", "qcow2", "a.qcow2", "64M");
  await io("-c", "write 0 1M", "a.qcow2");
  await q("bitmap", "--add", "a.qcow2", "b0");
  await io("-c", "write 2M 64k", "-c", "write 9M 4k", "a.qcow2");
  await q("bitmap", "--add", "-g", "4k", "a.qcow2", "b1");
  await io("-c", "write 3M 12k", "a.qcow2");
  await q("bitmap", "--disable", "a.qcow2", "b1");
  await q("create", "-q", "-f", "qcow2", "s.qcow2", "64M");
  await q("bitmap", "--add", "s.qcow2", "sb");
  await io("-c", "write 5M 1M", "s.qcow2");
  await q("create", "-q", "-f", "qcow2", "t.qcow2", "32M");
  await q("bitmap", "--add", "t.qcow2", "tb");
  await q("create", "-q", "-f", "qcow2", "-o", "compat=0.10", "v2.qcow2", "1M");
  await q("create", "-q", "-f", "raw", "r.raw", "1M");
  await Deno.copyFile(`${dir}/a.qcow2`, `${dir}/iu.qcow2`);
  // Killed while open read/write: its bitmaps stay in_use (inconsistent).
  await io("-c", "sigraise 9", "iu.qcow2");
  await q("bitmap", "--add", "iu.qcow2", "fresh");
}

const IMAGES = ["a.qcow2", "s.qcow2", "t.qcow2", "iu.qcow2", "v2.qcow2"];

/**
 * What qemu-img info and check say of every qcow2 image, and the bits we load from it; with
 * `layout`, also where the file's clusters are (`qemu-img map -f raw`, holes included: QEMU
 * writes a bitmap table at its own size and discards a freed bitmap's data). A conversion's
 * layout is each tool's own choice.
 */
async function state(dir: string, names = IMAGES, layout = false): Promise<unknown> {
  const out: Record<string, unknown> = {};
  for (const name of names) {
    const info = JSON.parse(
      (await runPeer("qemu-img", ["info", "--output=json", name], { cwd: dir })).out,
    );
    const check = await runPeer("qemu-img", ["check", name], { cwd: dir });
    const verdict = check.out.split("\n")[0];
    assertEquals([name, verdict], [name, "No errors were found on the image."]);
    const map = layout
      ? (await runPeer("qemu-img", ["map", "--output=json", "-f", "raw", name], { cwd: dir })).out
      : null;
    out[name] = {
      bitmaps: info["format-specific"].data.bitmaps,
      verdict,
      bits: await bits(dir, name),
      map,
    };
  }
  return out;
}

async function bits(dir: string, name: string): Promise<unknown> {
  const graph = new Graph({ registry: defaultRegistry() });
  const node = await graph.open({
    driver: "qcow2",
    "read-only": true,
    file: { driver: "file", filename: `${dir}/${name}` },
  }, "t");
  try {
    return node.dirtyBitmaps.map((b) => [b.name, [...b.hbitmap.areas()]]);
  } finally {
    await node.unref("t");
    await graph.closeAll();
  }
}

const CASES: string[][] = [
  ["bitmap", "a.qcow2", "b0"],
  ["bitmap", "--add", "a.qcow2"],
  ["bitmap", "--add", "-g", "1000", "a.qcow2", "n"],
  ["bitmap", "--add", "-g", "1x", "a.qcow2", "n"],
  ["bitmap", "--add", "-g", "0", "a.qcow2", "n"],
  ["bitmap", "--add", "-g", "4G", "a.qcow2", "n"],
  ["bitmap", "--add", "-g", "2G", "a.qcow2", "n"],
  ["bitmap", "--add", "a.qcow2", "b0"],
  ["bitmap", "--add", "a.qcow2", ""],
  ["bitmap", "--remove", "-g", "4k", "a.qcow2", "b0"],
  ["bitmap", "--clear", "-F", "raw", "a.qcow2", "b0"],
  ["bitmap", "--clear", "-b", "r.raw", "a.qcow2", "b0"],
  ["bitmap", "--remove", "a.qcow2", "b0"],
  ["bitmap", "--remove", "a.qcow2", "nob"],
  ["bitmap", "--clear", "a.qcow2", "b0"],
  ["bitmap", "--enable", "a.qcow2", "b1"],
  ["bitmap", "--disable", "a.qcow2", "b0"],
  ["bitmap", "--merge", "b1", "a.qcow2", "b0"],
  ["bitmap", "--merge", "b0", "a.qcow2", "b1"],
  ["bitmap", "--merge", "x", "a.qcow2", "b0"],
  ["bitmap", "--merge", "sb", "-b", "s.qcow2", "-F", "qcow2", "a.qcow2", "b1"],
  ["bitmap", "--merge", "tb", "-b", "t.qcow2", "a.qcow2", "b1"],
  ["bitmap", "--merge", "b0", "-b", "nonexist", "a.qcow2", "b0"],
  ["bitmap", "--add", "-f", "raw", "r.raw", "b0"],
  ["bitmap", "--add", "v2.qcow2", "d"],
  ["bitmap", "--add", "--remove", "--add", "a.qcow2", "c"],
  ["bitmap", "--add", "--merge", "b0", "--merge", "b1", "-g", "8k", "--disable", "a.qcow2", "c"],
  ["bitmap", "--add", "--merge", "b0", "--clear", "a.qcow2", "c"],
  ["bitmap", "--disable", "--add", "a.qcow2", "d"],
  ["bitmap", "--add", "--add", "a.qcow2", "d"],
  ["bitmap", "--image-opts", "--add", "driver=qcow2,file.filename=a.qcow2", "io"],
  ["bitmap", "--object", "secret,id=s0,data=x", "--clear", "a.qcow2", "b0"],
  ["bitmap", "--object", "bogus,id=s0", "--clear", "a.qcow2", "b0"],
  ["bitmap", "--clear", "iu.qcow2", "b0"],
  ["bitmap", "--remove", "iu.qcow2", "b0"],
  ["bitmap", "--merge", "b0", "iu.qcow2", "fresh"],
  ["bitmap", "--merge", "fresh", "iu.qcow2", "b0"],
  ["bitmap", "--foo", "a.qcow2", "b0"],
];

/**
 * Makes the images once, then for each of `cases` copies them afresh into `a` (for qemu-img)
 * and `b` (for ours) and runs `fn`.
 */
async function onFreshCopies(
  cases: string[][],
  fn: (args: string[], a: string, b: string) => Promise<void>,
): Promise<void> {
  await ensurePeers(["qemu-img", "qemu-io"]);
  const src = await Deno.makeTempDir();
  const a = await Deno.makeTempDir();
  const b = await Deno.makeTempDir();
  try {
    await makeImages(src);
    for (const args of cases) {
      for (const d of [a, b]) {
        await runPeer("find", [d, "-mindepth", "1", "-delete"], { cwd: d });
        await runPeer("cp", ["-a", `${src}/.`, d], { cwd: src });
      }
      await fn(args, a, b);
    }
  } finally {
    for (const d of [src, a, b]) await Deno.remove(d, { recursive: true });
  }
}

Deno.test("img bitmap changes qemu-img's bitmaps as qemu-img bitmap does", () =>
  onFreshCopies(CASES, async (args, a, b) => {
    const theirs = await runPeer("qemu-img", args, { cwd: a });
    const mine = await runOurImg(args, b);
    // QEMU's generated node names carry a random part.
    const norm = (r: PeerResult) => ({ ...r, err: r.err.replace(/#block\d+/g, "#blockN") });
    assertEquals({ args, ...norm(mine) }, { args, ...norm(theirs) });
    assertEquals({ args, state: await state(b, IMAGES, true) }, {
      args,
      state: await state(a, IMAGES, true),
    });
  }));

const CONVERT_CASES: string[][] = [
  ["convert", "--bitmaps", "-O", "qcow2", "a.qcow2", "o.qcow2"],
  ["convert", "--bitmaps", "-O", "qcow2", "-o", "cluster_size=4k", "a.qcow2", "o.qcow2"],
  ["convert", "--bitmaps", "-O", "qcow2", "-B", "s.qcow2", "-F", "qcow2", "a.qcow2", "o.qcow2"],
  ["convert", "--bitmaps", "--skip-broken-bitmaps", "-O", "qcow2", "iu.qcow2", "o.qcow2"],
  ["convert", "--bitmaps", "-O", "qcow2", "iu.qcow2", "o.qcow2"],
  ["convert", "--skip-broken-bitmaps", "-O", "qcow2", "a.qcow2", "o.qcow2"],
  ["convert", "--bitmaps", "-O", "qcow2", "a.qcow2", "s.qcow2", "o.qcow2"],
  ["convert", "--bitmaps", "-O", "qcow2", "-f", "raw", "r.raw", "o.qcow2"],
  ["convert", "--bitmaps", "-O", "raw", "a.qcow2", "o.raw"],
  ["convert", "--bitmaps", "-O", "qcow2", "-o", "compat=0.10", "a.qcow2", "o.qcow2"],
  ["convert", "--bitmaps", "-n", "-O", "qcow2", "a.qcow2", "s.qcow2"],
];

Deno.test("img convert --bitmaps copies qemu-img's bitmaps as qemu-img convert does", () =>
  onFreshCopies(CONVERT_CASES, async (args, a, b) => {
    const theirs = await runPeer("qemu-img", args, { cwd: a });
    const mine = await runOurImg(args, b);
    assertEquals({ args, ...mine }, { args, ...theirs });
    const made: string[] = [];
    for await (const e of Deno.readDir(a)) if (e.name.startsWith("o.qcow2")) made.push(e.name);
    const names = [...made, "s.qcow2"];
    assertEquals(
      { args, state: await state(b, names) },
      { args, state: await state(a, names) },
    );
  }));
