/**
 * `blockgraph img` against qemu-img 7.2: the same command on copies of the same images gives
 * the same stdout, stderr and exit status (map, compare, info, check, create, measure,
 * resize, snapshot, dd), and images our convert, resize, commit and rebase write pass
 * `qemu-img check` with `qemu-img compare` agreeing.
 *
 * @module
 */

import { deepStrictEqual as assertEquals } from "node:assert";
import { runOurImg } from "./cli_run.ts";
import { ensurePeers } from "./peers.ts";
import { runPeer } from "./peer_run.ts";
import { extentSizeHintOf } from "../packages/drivers/protocols/file_posix.ts";

/** Makes the images both tools run on: a qcow2 chain with data, zeros and a snapshot, a raw. */
async function makeImages(dir: string): Promise<void> {
  const q = (args: string[]) => runPeer("qemu-img", args, { cwd: dir });
  const io = (args: string[]) => runPeer("qemu-io", args, { cwd: dir });
  await q(["create", "-q", "-f", "qcow2", "base.qcow2", "4M"]);
  await io([
    "-c",
    "write -P 1 0 64k",
    "-c",
    "write -z 1M 64k",
    "-c",
    "write -P 2 2M 128k",
    "base.qcow2",
  ]);
  await q(["create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "top.qcow2"]);
  await io(["-c", "write -P 3 64k 64k", "-c", "write -z 2M 64k", "top.qcow2"]);
  await q(["convert", "-O", "raw", "top.qcow2", "flat.raw"]);
  await q(["convert", "-O", "qcow2", "top.qcow2", "flat.qcow2"]);
  await q(["convert", "-c", "-O", "qcow2", "top.qcow2", "comp.qcow2"]);
  await q([
    "create",
    "-q",
    "-f",
    "qcow2",
    "-o",
    "cluster_size=4k,refcount_bits=8",
    "small.qcow2",
    "1M",
  ]);
  await io(["-c", "write -P 7 4k 12k", "small.qcow2"]);
  await Deno.copyFile(`${dir}/base.qcow2`, `${dir}/snap.qcow2`);
  await q(["snapshot", "-c", "s1", "snap.qcow2"]);
  await Deno.copyFile(`${dir}/flat.raw`, `${dir}/other.raw`);
  await io(["-f", "raw", "-c", "write -P 9 100000 1", "other.raw"]);
  await Deno.copyFile(`${dir}/small.qcow2`, `${dir}/bm.qcow2`);
  await q(["bitmap", "--add", "bm.qcow2", "b0"]);
  await q(["bitmap", "--add", "--disable", "-g", "4096", "bm.qcow2", "b1"]);
  // Metadata preallocation: every cluster mapped, most of them holes in the file.
  await q(["create", "-q", "-f", "qcow2", "-o", "preallocation=metadata", "pm.qcow2", "4M"]);
  await io(["-c", "write -P 5 64k 4k", "pm.qcow2"]);
}

/** Runs `args` through both tools, each on its own copy of the images. */
async function differential(args: string[]): Promise<void> {
  const a = await Deno.makeTempDir();
  const b = await Deno.makeTempDir();
  try {
    const src = await Deno.makeTempDir();
    await makeImages(src);
    // cp keeps holes (Deno.copyFile fills them): both sides get the same layout.
    for (const d of [a, b]) {
      await runPeer("cp", ["-a", "--sparse=always", `${src}/.`, d], { cwd: src });
    }
    await Deno.remove(src, { recursive: true });
    const theirs = await runPeer("qemu-img", args, { cwd: a });
    const mine = await runOurImg(args, b);
    assertEquals({ args, ...mine }, { args, ...theirs });
  } finally {
    await Deno.remove(a, { recursive: true });
    await Deno.remove(b, { recursive: true });
  }
}

const CASES: string[][] = [
  ["map", "top.qcow2"],
  ["map", "--output=json", "top.qcow2"],
  ["map", "--output=json", "--start-offset=64k", "--max-length=2M", "top.qcow2"],
  ["map", "--output=json", "small.qcow2"],
  ["map", "-f", "raw", "flat.raw"],
  ["map", "--output=json", "comp.qcow2"],
  ["map", "comp.qcow2"],
  ["map", "pm.qcow2"],
  ["map", "--output=json", "pm.qcow2"],
  ["compare", "pm.qcow2", "flat.raw"],
  ["compare", "top.qcow2", "flat.raw"],
  ["compare", "top.qcow2", "flat.qcow2"],
  ["compare", "-s", "top.qcow2", "flat.qcow2"],
  ["compare", "flat.raw", "other.raw"],
  ["compare", "top.qcow2", "base.qcow2"],
  ["compare", "top.qcow2", "small.qcow2"],
  ["compare", "missing.raw", "flat.raw"],
  ["info", "top.qcow2"],
  ["info", "--output=json", "--backing-chain", "top.qcow2"],
  ["info", "--backing-chain", "top.qcow2"],
  ["info", "small.qcow2"],
  ["info", "bm.qcow2"],
  ["info", "--output=json", "bm.qcow2"],
  ["info", "--output=json", "flat.raw"],
  ["check", "top.qcow2"],
  ["check", "--output=json", "comp.qcow2"],
  ["check", "flat.raw"],
  ["check", "-r", "bogus", "top.qcow2"],
  ["create", "-f", "qcow2", "new.qcow2", "1M"],
  ["create", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "new.qcow2"],
  ["create", "-f", "qcow2", "-o", "cluster_size=4k,lazy_refcounts=on", "new.qcow2", "1M"],
  ["measure", "-O", "qcow2", "top.qcow2"],
  ["measure", "--output=json", "-O", "qcow2", "--size", "1G"],
  ["measure", "-O", "qcow2", "bm.qcow2"],
  ["measure", "--output=json", "-O", "qcow2", "-o", "cluster_size=512", "bm.qcow2"],
  ["measure", "-O", "qcow2", "-o", "compat=0.10", "bm.qcow2"],
  ["measure", "-O", "qcow2", "-o", "preallocation=full", "flat.raw"],
  ["measure", "-O", "qcow2", "-o", "preallocation=falloc", "top.qcow2"],
  ["resize", "base.qcow2", "-1M"],
  ["resize", "-f", "raw", "flat.raw", "+1M"],
  ["snapshot", "-l", "snap.qcow2"],
  ["snapshot", "-d", "nonexistent", "snap.qcow2"],
  // -d takes names only (-a takes IDs too).
  ["snapshot", "-d", "1", "snap.qcow2"],
  ["snapshot", "-a", "1", "snap.qcow2"],
  ["convert", "-m", "17", "flat.raw", "out.raw"],
  ["convert", "-n", "--target-image-opts", "flat.raw", "driver=raw,file.filename=other.raw"],
  ["dd", "if=flat.raw", "of=out.raw", "foo=1"],
  ["commit", "-f", "raw", "flat.raw"],
];

Deno.test("img subcommands answer byte for byte as qemu-img on the same images", async () => {
  await ensurePeers(["qemu-img", "qemu-io"]);
  for (const args of CASES) await differential(args);
});

/**
 * The allocation a `map --output=json` shows, without host offsets (they differ with the
 * metadata layout), runs re-merged.
 */
function allocation(json: string): Record<string, unknown>[] {
  const out: Record<string, unknown>[] = [];
  for (const { offset: _o, ...e } of JSON.parse(json) as Record<string, unknown>[]) {
    const last = out[out.length - 1];
    const key = (x: Record<string, unknown>) => `${x.depth}${x.present}${x.zero}${x.data}`;
    if (last && key(last) === key(e)) {
      last.length = (last.length as number) + (e.length as number);
    } else out.push(e);
  }
  return out;
}

Deno.test("images img convert, resize, commit and rebase write pass qemu-img check and compare", async () => {
  await ensurePeers(["qemu-img", "qemu-io"]);
  const dir = await Deno.makeTempDir();
  try {
    await makeImages(dir);
    const q = (args: string[]) => runPeer("qemu-img", args, { cwd: dir });
    const clean = async (img: string) => {
      const c = await q(["check", img]);
      assertEquals([img, c.code, c.out.split("\n")[0]], [
        img,
        0,
        "No errors were found on the image.",
      ]);
    };
    const same = async (a: string, b: string) => {
      assertEquals([a, b, (await q(["compare", a, b])).out], [a, b, "Images are identical.\n"]);
    };
    for (const extra of [[], ["-c"], ["-W", "-m", "2", "-o", "cluster_size=4k"], ["-S", "0"]]) {
      const r = await runOurImg(["convert", ...extra, "-O", "qcow2", "top.qcow2", "c.qcow2"], dir);
      assertEquals(r, { code: 0, out: "", err: "" });
      await clean("c.qcow2");
      await same("c.qcow2", "flat.raw");
      if (extra.length === 0) {
        await q(["convert", "-O", "qcow2", "top.qcow2", "ref.qcow2"]);
        const mine = (await q(["map", "--output=json", "c.qcow2"])).out;
        const theirs = (await q(["map", "--output=json", "ref.qcow2"])).out;
        assertEquals(allocation(mine), allocation(theirs));
      }
      await Deno.remove(`${dir}/c.qcow2`);
    }
    assertEquals((await runOurImg(["convert", "-O", "raw", "top.qcow2", "c.raw"], dir)).code, 0);
    await same("c.raw", "top.qcow2");
    assertEquals(
      (await q(["map", "--output=json", "c.raw"])).out,
      (await q(["map", "--output=json", "flat.raw"])).out,
    );
    const b = await runOurImg([
      "convert",
      "-B",
      "base.qcow2",
      "-F",
      "qcow2",
      "-O",
      "qcow2",
      "top.qcow2",
      "b.qcow2",
    ], dir);
    assertEquals(b, { code: 0, out: "", err: "" });
    await clean("b.qcow2");
    await same("b.qcow2", "top.qcow2");
    assertEquals((await runOurImg(["resize", "small.qcow2", "+3M"], dir)).out, "Image resized.\n");
    await clean("small.qcow2");
    assertEquals((await runOurImg(["resize", "--shrink", "small.qcow2", "-3M"], dir)).code, 0);
    await clean("small.qcow2");
    await q(["create", "-q", "-f", "qcow2", "other.qcow2", "4M"]);
    await runPeer("qemu-io", ["-c", "write -P 5 512k 1M", "other.qcow2"], { cwd: dir });
    assertEquals(
      (await runOurImg(["rebase", "-b", "other.qcow2", "-F", "qcow2", "top.qcow2"], dir)).code,
      0,
    );
    await clean("top.qcow2");
    await same("top.qcow2", "flat.raw");
    assertEquals((await runOurImg(["commit", "top.qcow2"], dir)).out, "Image committed.\n");
    await clean("other.qcow2");
    await same("other.qcow2", "flat.raw");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("img convert -o backing_file= copies only the source's top layer, as -B and qemu-img", async () => {
  await ensurePeers(["qemu-img", "qemu-io"]);
  const dir = await Deno.makeTempDir();
  try {
    await makeImages(dir);
    const q = (args: string[]) => runPeer("qemu-img", args, { cwd: dir });
    const target = ["-O", "qcow2", "-o", "backing_file=base.qcow2,backing_fmt=qcow2"];
    await q(["convert", ...target, "top.qcow2", "ref.qcow2"]);
    const r = await runOurImg(["convert", ...target, "top.qcow2", "o.qcow2"], dir);
    assertEquals(r, { code: 0, out: "", err: "" });
    const map = async (img: string) => (await q(["map", "--output=json", img])).out;
    assertEquals(allocation(await map("o.qcow2")), allocation(await map("ref.qcow2")));
    assertEquals((await q(["compare", "o.qcow2", "top.qcow2"])).out, "Images are identical.\n");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("img rebase copies what differs, where qemu-img rebase does", async () => {
  await ensurePeers(["qemu-img", "qemu-io"]);
  const dirs = [await Deno.makeTempDir(), await Deno.makeTempDir()];
  try {
    const maps: unknown[] = [];
    for (const [i, dir] of dirs.entries()) {
      const q = (args: string[]) => runPeer("qemu-img", args, { cwd: dir });
      const io = (img: string, ...c: string[]) =>
        runPeer("qemu-io", [...c.flatMap((x) => ["-c", x]), img], { cwd: dir });
      await q(["create", "-q", "-f", "qcow2", "old.qcow2", "4M"]);
      await io("old.qcow2", "write -P 1 0 1M", "write -P 2 2M 512k");
      // Shorter than the overlay; the same as the old base in its first 512 KiB.
      await q(["create", "-q", "-f", "qcow2", "new.qcow2", "2M"]);
      await io("new.qcow2", "write -P 1 0 512k", "write -P 9 1536k 256k", "write -P 1 800k 3k");
      await q(["create", "-q", "-f", "qcow2", "-b", "old.qcow2", "-F", "qcow2", "top.qcow2"]);
      await io("top.qcow2", "write -P 3 256k 64k");
      await q(["convert", "-O", "raw", "top.qcow2", "want.raw"]);
      const args = ["rebase", "-b", "new.qcow2", "-F", "qcow2", "top.qcow2"];
      const r = i === 0 ? await runOurImg(args, dir) : await q(args);
      assertEquals([i, r.code, r.out, r.err], [i, 0, "", ""]);
      assertEquals([i, (await q(["check", "top.qcow2"])).code], [i, 0]);
      const cmp = await q(["compare", "-F", "raw", "top.qcow2", "want.raw"]);
      assertEquals([i, cmp.out], [i, "Images are identical.\n"]);
      maps.push(allocation((await q(["map", "--output=json", "top.qcow2"])).out));
    }
    assertEquals(maps[0], maps[1]);
  } finally {
    for (const dir of dirs) await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("img commit empties a qcow2 top as qemu-img commit does", async () => {
  await ensurePeers(["qemu-img", "qemu-io"]);
  const dirs = [await Deno.makeTempDir(), await Deno.makeTempDir()];
  try {
    const maps: string[] = [];
    for (const [i, dir] of dirs.entries()) {
      await makeImages(dir);
      const q = (args: string[]) => runPeer("qemu-img", args, { cwd: dir });
      // A compressed cluster in the top too.
      await runPeer("qemu-io", ["-c", "write -c -P 4 3M 64k", "top.qcow2"], { cwd: dir });
      const r = i === 0
        ? await runOurImg(["commit", "top.qcow2"], dir)
        : await q(["commit", "top.qcow2"]);
      assertEquals([i, r.code, r.out, r.err], [i, 0, "Image committed.\n", ""]);
      for (const img of ["top.qcow2", "base.qcow2"]) {
        const c = await q(["check", img]);
        assertEquals([i, img, c.code, c.out.split("\n")[0]], [
          i,
          img,
          0,
          "No errors were found on the image.",
        ]);
      }
      const cmp = await q(["compare", "top.qcow2", "base.qcow2"]);
      assertEquals([i, cmp.code, cmp.out], [i, 0, "Images are identical.\n"]);
      const map = await q(["map", "--output=json", "top.qcow2"]);
      assertEquals([i, map.code], [i, 0]);
      const entries = JSON.parse(map.out) as { depth: number }[];
      assertEquals([i, entries.filter((e) => e.depth === 0)], [i, []]);
      // Which layer answers where and how, merged into runs (host offsets differ with the
      // order a mirror writes in): qemu-img's commit keeps zeros as zero clusters in the base.
      for (const img of ["top.qcow2", "base.qcow2"]) {
        const m = await q(["map", "--output=json", img]);
        const runs: string[] = [];
        let prev = "";
        for (const e of JSON.parse(m.out) as Record<string, unknown>[]) {
          const key = `depth ${e.depth} present ${e.present} zero ${e.zero} data ${e.data}`;
          if (key !== prev) runs.push(`${img} ${e.start}: ${key}`);
          prev = key;
        }
        maps.push(runs.join("\n"));
      }
    }
    assertEquals(maps.slice(0, 2), maps.slice(2));
  } finally {
    for (const dir of dirs) await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("img commit grows a base shorter than the top, as qemu-img commit does", async () => {
  await ensurePeers(["qemu-img", "qemu-io"]);
  const dirs = [await Deno.makeTempDir(), await Deno.makeTempDir()];
  try {
    const maps: string[] = [];
    for (const [i, dir] of dirs.entries()) {
      const q = (args: string[]) => runPeer("qemu-img", args, { cwd: dir });
      await q(["create", "-q", "-f", "qcow2", "b.qcow2", "1M"]);
      await q(["create", "-q", "-f", "qcow2", "-b", "b.qcow2", "-F", "qcow2", "t.qcow2", "4M"]);
      // Data below and past the base's end, and zeros past it.
      await runPeer("qemu-io", [
        "-c",
        "write -P 7 0 64k",
        "-c",
        "write -z 1M 64k",
        "-c",
        "write -P 9 3M 64k",
        "t.qcow2",
      ], { cwd: dir });
      await q(["convert", "-O", "raw", "t.qcow2", "want.raw"]);
      const r = i === 0
        ? await runOurImg(["commit", "t.qcow2"], dir)
        : await q(["commit", "t.qcow2"]);
      assertEquals([i, r.code, r.out, r.err], [i, 0, "Image committed.\n", ""]);
      const check = await q(["check", "b.qcow2"]);
      assertEquals([i, check.code], [i, 0]);
      const cmp = await q(["compare", "-f", "qcow2", "-F", "raw", "b.qcow2", "want.raw"]);
      assertEquals([i, cmp.code, cmp.out], [i, 0, "Images are identical.\n"]);
      const info = JSON.parse((await q(["info", "--output=json", "b.qcow2"])).out);
      const map = JSON.parse((await q(["map", "--output=json", "b.qcow2"])).out) as Record<
        string,
        unknown
      >[];
      maps.push(JSON.stringify([info["virtual-size"], map.map((e) => [e.start, e.zero, e.data])]));
    }
    assertEquals(maps[0], maps[1]);
  } finally {
    for (const dir of dirs) await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("img convert -l reads an internal snapshot as qemu-img convert -l does", async () => {
  await ensurePeers(["qemu-img", "qemu-io"]);
  const dir = await Deno.makeTempDir();
  try {
    const q = (args: string[]) => runPeer("qemu-img", args, { cwd: dir });
    await q(["create", "-q", "-f", "qcow2", "s.qcow2", "16M"]);
    await runPeer("qemu-io", ["-c", "write -P 1 0 1M", "-c", "write -P 3 8M 64k", "s.qcow2"], {
      cwd: dir,
    });
    await q(["snapshot", "-c", "small", "s.qcow2"]);
    // After the snapshot: a bigger disk (the snapshot's L1 table is shorter) and new data.
    await q(["resize", "-q", "s.qcow2", "32M"]);
    await runPeer("qemu-io", ["-c", "write -P 2 0 512k", "-c", "write -P 4 20M 1M", "s.qcow2"], {
      cwd: dir,
    });
    for (
      const l of [
        "snapshot.name=small",
        "snapshot.id=1",
        "snapshot.id=1,snapshot.name=small",
        "small",
        "1",
        "nope",
        "snapshot.id=1,snapshot.name=nope",
        "snapshot.bogus=1",
      ]
    ) {
      for (const fmt of ["raw", "qcow2"]) {
        const theirs = await q(["convert", "-O", fmt, "-l", l, "s.qcow2", `q.${fmt}`]);
        const mine = await runOurImg(["convert", "-O", fmt, "-l", l, "s.qcow2", `o.${fmt}`], dir);
        assertEquals({ l, fmt, ...mine }, { l, fmt, ...theirs });
        if (theirs.code !== 0) continue;
        const cmp = await q(["compare", "-f", fmt, "-F", fmt, `q.${fmt}`, `o.${fmt}`]);
        assertEquals([l, fmt, cmp.code, cmp.out], [l, fmt, 0, "Images are identical.\n"]);
        const map = async (p: string) => (await q(["map", "--output=json", "-f", fmt, p])).out;
        assertEquals([l, fmt, await map(`o.${fmt}`)], [l, fmt, await map(`q.${fmt}`)]);
        await Deno.remove(`${dir}/q.${fmt}`);
        await Deno.remove(`${dir}/o.${fmt}`);
      }
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("img check -r leaks fails as qemu-img when the refcounts need a rebuild", async () => {
  await ensurePeers(["qemu-img", "qemu-io"]);
  const dir = await Deno.makeTempDir();
  try {
    const q = (args: string[]) => runPeer("qemu-img", args, { cwd: dir });
    await q(["create", "-q", "-f", "qcow2", "k.qcow2", "16M"]);
    await runPeer("qemu-io", ["-c", "write -P 1 0 1M", "k.qcow2"], { cwd: dir });
    // The refcount of cluster 5 (data) drops to 0: only -r all may rebuild the structures.
    const f = await Deno.open(`${dir}/k.qcow2`, { write: true });
    await f.seek(0x20000 + 2 * 5, Deno.SeekMode.Start);
    await f.write(new Uint8Array(2));
    f.close();
    for (const args of [["-r", "leaks"], ["-r", "leaks", "--output=json"], []]) {
      await Deno.copyFile(`${dir}/k.qcow2`, `${dir}/q.qcow2`);
      await Deno.copyFile(`${dir}/k.qcow2`, `${dir}/o.qcow2`);
      const theirs = await q(["check", ...args, "q.qcow2"]);
      const mine = await runOurImg(["check", ...args, "o.qcow2"], dir);
      const norm = (r: { code: number; out: string; err: string }, name: string) => ({
        args,
        code: r.code,
        out: r.out.replaceAll(name, "X"),
        err: r.err.replaceAll(name, "X"),
      });
      assertEquals(norm(mine, "o.qcow2"), norm(theirs, "q.qcow2"));
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("img refuses a backing chain that loops back on itself, where qemu-img map and check hang", async () => {
  await ensurePeers(["qemu-img"]);
  const dir = await Deno.makeTempDir();
  try {
    const q = (args: string[]) => runPeer("qemu-img", args, { cwd: dir });
    await q(["create", "-q", "-f", "qcow2", "a.qcow2", "1M"]);
    await q(["create", "-q", "-f", "qcow2", "-b", "a.qcow2", "-F", "qcow2", "b.qcow2"]);
    await q(["rebase", "-u", "-b", "b.qcow2", "-F", "qcow2", "a.qcow2"]);
    await q(["create", "-q", "-f", "qcow2", "s.qcow2", "1M"]);
    await q(["rebase", "-u", "-b", "s.qcow2", "-F", "qcow2", "s.qcow2"]);
    const loop = "Backing file 'b.qcow2' creates an infinite loop";
    const cases: [string[], string][] = [
      [
        ["check", "b.qcow2"],
        `qemu-img: Could not open 'b.qcow2': Could not open backing file: ${loop}\n`,
      ],
      [
        ["map", "a.qcow2"],
        "qemu-img: Could not open 'a.qcow2': Could not open backing file: " +
        "Backing file 'a.qcow2' creates an infinite loop\n",
      ],
      [
        ["check", "s.qcow2"],
        "qemu-img: Could not open 's.qcow2': Backing file 's.qcow2' creates an infinite loop\n",
      ],
      // The one place qemu-img names the loop itself, with the same words.
      [["info", "--backing-chain", "b.qcow2"], `qemu-img: ${loop}.\n`],
    ];
    for (const [args, err] of cases) {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const hung = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`img ${args.join(" ")} hangs`)), 20_000);
      });
      try {
        const r = await Promise.race([runOurImg(args, dir), hung]);
        assertEquals({ args, code: r.code, err: r.err }, { args, code: 1, err });
      } finally {
        clearTimeout(timer);
      }
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("img convert, map and compare report a corrupt or unreadable qcow2 as qemu-img", async () => {
  await ensurePeers(["qemu-img", "qemu-io"]);
  const dir = await Deno.makeTempDir();
  try {
    const q = (args: string[]) => runPeer("qemu-img", args, { cwd: dir });
    // Cluster 1's L2 entry points at an unaligned offset; cluster 0's entry says compressed
    // where the data is not (the deflate stream does not decode).
    const cases: [string, bigint][] = [
      ["unaligned", 0x8000000000001000n],
      ["bad compressed", 0x4000000000100000n],
    ];
    for (const [what, entry] of cases) {
      await Deno.remove(`${dir}/k.qcow2`).catch(() => {});
      await q(["create", "-q", "-f", "qcow2", "k.qcow2", "16M"]);
      await runPeer("qemu-io", ["-c", "write -P 1 0 1M", "k.qcow2"], { cwd: dir });
      const f = await Deno.open(`${dir}/k.qcow2`, { write: true });
      const b = new Uint8Array(8);
      new DataView(b.buffer).setBigUint64(0, entry);
      await f.seek(0x40000 + (what === "unaligned" ? 8 : 0), Deno.SeekMode.Start);
      await f.write(b);
      f.close();
      for (
        const args of [
          ["convert", "-O", "raw", "NAME.qcow2", "NAME.raw"],
          ["map", "NAME.qcow2"],
          ["compare", "NAME.qcow2", "NAME.qcow2"],
        ]
      ) {
        for (const n of ["q", "o"]) await Deno.copyFile(`${dir}/k.qcow2`, `${dir}/${n}.qcow2`);
        const theirs = await q(args.map((a) => a.replace("NAME", "q")));
        const mine = await runOurImg(args.map((a) => a.replace("NAME", "o")), dir);
        const norm = (r: { code: number; out: string; err: string }, n: string) => ({
          what,
          args,
          code: r.code,
          out: r.out.replaceAll(`${n}.`, "X."),
          // The driver's "qcow2: Image is corrupt: ..." line goes to the process's stderr
          // (as QEMU's fprintf does), which the in-process run here does not capture.
          err: r.err.replaceAll(`${n}.`, "X.").replace(/^qcow2: .*\n/gm, ""),
        });
        assertEquals(norm(mine, "o"), norm(theirs, "q"));
      }
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("img convert and dd with write-behind (-t writeback) write the same image as their source", async () => {
  await ensurePeers(["qemu-img", "qemu-io"]);
  const dir = await Deno.makeTempDir();
  try {
    const q = (args: string[]) => runPeer("qemu-img", args, { cwd: dir });
    await q(["create", "-q", "-f", "raw", "src.raw", "48M"]);
    // 24 MiB of data in three runs: a 16 MiB write-behind window, and a tail.
    const io = await runPeer("qemu-io", [
      "-f",
      "raw",
      "-c",
      "write -P 7 0 10M",
      "-c",
      "write -P 9 20M 10M",
      "-c",
      "write -P 11 44M 4M",
      "src.raw",
    ], { cwd: dir });
    assertEquals(io.code, 0, io.err);
    const cases: [string[], string, string][] = [
      [["convert", "-t", "writeback", "-O", "qcow2", "src.raw", "w.qcow2"], "w.qcow2", "qcow2"],
      [["convert", "-t", "writeback", "-O", "raw", "w.qcow2", "w.raw"], "w.raw", "raw"],
      [["dd", "-O", "raw", "bs=1M", "if=src.raw", "of=d.raw"], "d.raw", "raw"],
    ];
    for (const [args, out, fmt] of cases) {
      assertEquals(await runOurImg(args, dir), { code: 0, out: "", err: "" }, args.join(" "));
      if (fmt === "qcow2") assertEquals((await q(["check", out])).code, 0, `${out} checks clean`);
      assertEquals((await q(["compare", "src.raw", out])).out, "Images are identical.\n", out);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("img create -o nocow, extent_size_hint answer as qemu-img and set the same extent size hint", async () => {
  await ensurePeers(["qemu-img"]);
  // The temporary directory's file system, and tmpfs where there is one: tmpfs refuses a
  // non-zero hint, which qemu-img reports as a warning.
  const parents: Deno.MakeTempOptions[] = [{}];
  if ((await Deno.stat("/dev/shm").catch(() => null))?.isDirectory) {
    parents.push({ dir: "/dev/shm" });
  }
  const cases = [
    ["create", "-f", "raw", "x.img", "1M"],
    ["create", "-f", "raw", "-o", "extent_size_hint=2M", "x.img", "1M"],
    ["create", "-f", "raw", "-o", "extent_size_hint=0,nocow=on", "x.img", "1M"],
    ["create", "-f", "raw", "-o", "nocow=on,preallocation=falloc", "x.img", "1M"],
    ["create", "-f", "qcow2", "-o", "extent_size_hint=64k,nocow=on", "x.img", "1M"],
    ["create", "-f", "qcow2", "-o", "extent_size_hint=3M,data_file=d.img", "x.img", "1M"],
    ["create", "-f", "qcow2", "-o", "extent_size_hint=5G", "x.img", "1M"],
    ["create", "-f", "raw", "-o", "nocow=maybe", "x.img", "1M"],
    ["convert", "-O", "qcow2", "-o", "nocow=on,extent_size_hint=2M", "x.img", "y.img"],
  ];
  for (const parent of parents) {
    const a = await Deno.makeTempDir(parent);
    const b = await Deno.makeTempDir(parent);
    try {
      for (const args of cases) {
        if (args[0] === "convert") {
          for (const d of [a, b]) {
            await runPeer("qemu-img", ["create", "-q", "x.img", "1M"], { cwd: d });
          }
        }
        const theirs = await runPeer("qemu-img", args, { cwd: a });
        const mine = await runOurImg(args, b);
        assertEquals({ args, ...mine }, { args, ...theirs });
        for (const name of ["x.img", "y.img", "d.img"]) {
          const hint = [extentSizeHintOf(`${a}/${name}`), extentSizeHintOf(`${b}/${name}`)];
          assertEquals({ args, name, hint: hint[1] }, { args, name, hint: hint[0] });
          await Deno.remove(`${a}/${name}`).catch(() => {});
          await Deno.remove(`${b}/${name}`).catch(() => {});
        }
      }
    } finally {
      await Deno.remove(a, { recursive: true });
      await Deno.remove(b, { recursive: true });
    }
  }
});
