/**
 * `blockgraph io` against the real qemu-io: each reads what the other wrote, and the same
 * command lists give the same output (timing masked), exit status and image bytes, also
 * through `json:` filenames and `json:` backing file names.
 */
import { deepStrictEqual as assertEquals } from "node:assert";
import { runOurIo } from "./cli_run.ts";
import { ensurePeers } from "./peers.ts";
import { type PeerResult, runPeer } from "./peer_run.ts";

const STATS = /^\S+ \S*, \d+ ops; .*$/gm;
const MACHINE_STATS = /^\d+,\d+,[\d:.]+,[\d.]+,[\d.]+$/gm;

function mask(text: string, path: string): string {
  return text.replaceAll(path, "IMG").replace(STATS, "STATS").replace(MACHINE_STATS, "CSTATS");
}

async function qemuIo(args: string[]): Promise<PeerResult> {
  const r = await runPeer("qemu-io", args);
  // glibc names the program by argv[0], which is the full path when spawned from here.
  return { ...r, err: r.err.replace(/^\/\S*\/qemu-io: /gm, "qemu-io: ") };
}

async function withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  await ensurePeers(["qemu-io", "qemu-img"]);
  const dir = await Deno.makeTempDir();
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

async function image(path: string, size: number): Promise<void> {
  const r = await new Deno.Command("qemu-img", {
    args: ["create", "-q", "-f", "raw", path, String(size)],
  }).output();
  if (!r.success) throw new Error(`qemu-img create ${path} failed`);
}

const cmds = (...c: string[]) => c.flatMap((x) => ["-c", x]);

Deno.test("qemu-io reads back what blockgraph io wrote", async () => {
  await withDir(async (dir) => {
    const path = `${dir}/a.img`;
    await image(path, 1 << 20);
    const w = await runOurIo([
      "-f",
      "raw",
      ...cmds(
        "write -P 0x11 1 4095",
        "writev -P 0x22 8191 512 100 7",
        "write -z 4096 1000",
        "aio_write -P 0x33 65537 3000",
        "aio_flush",
      ),
      path,
    ]);
    assertEquals([w.code, w.err], [0, ""]);
    const r = await qemuIo([
      "-f",
      "raw",
      ...cmds(
        "read -q -P 0x11 1 4095",
        "read -q -P 0 4096 1000",
        "read -q -P 0x22 8191 619",
        "read -q -P 0x33 65537 3000",
        "read -q -P 0 68537 1000",
      ),
      path,
    ]);
    assertEquals(r, { code: 0, out: "", err: "" });
  });
});

Deno.test("blockgraph io reads back what qemu-io wrote", async () => {
  await withDir(async (dir) => {
    const path = `${dir}/a.img`;
    await image(path, 1 << 20);
    const w = await qemuIo([
      "-f",
      "raw",
      ...cmds("write -P 0x44 3 5000", "writev -P 0x55 10000 512 333", "write -z 5003 100"),
      path,
    ]);
    assertEquals(w.code, 0);
    const r = await runOurIo([
      "-f",
      "raw",
      ...cmds(
        "read -q -P 0x44 3 5000",
        "read -q -P 0x55 10000 845",
        "readv -q -P 0 5003 50 50",
        "read -q -P 0xcd 0 3",
      ),
      path,
    ]);
    assertEquals(r.out, "Pattern verification failed at offset 0, 3 bytes\n");
    assertEquals(r.code, 1);
  });
});

/** Command lists run through both tools on copies of one image. */
const SCENARIOS: { name: string; args: string[]; size?: number }[] = [
  {
    name: "data commands and reports",
    args: [
      "-f",
      "raw",
      ...cmds(
        "write -P 0xab 1 1000",
        "read -P 0xab 1 1000",
        "read -v 0 40",
        "read -C 0 512",
        "readv -P 0 2048 512 100",
        "writev -q -P 7 100000 512 511",
        "write -zu 4096 4096",
        "write -f 0 10",
        "write -s IMG 200000 5000",
        "discard 8192 4096",
        "flush",
        "map",
        "alloc 0 4k",
        "alloc 1M",
        "length",
        "info",
        "truncate 2M",
        "length",
      ),
      "IMG",
    ],
  },
  {
    name: "failing commands",
    args: [
      "-f",
      "raw",
      ...cmds(
        "read 1048000 1000",
        "read -P 0xcd 0 512",
        "read -x 0 1",
        "read",
        "read 0 1x",
        "read 0 3G",
        "read -P 256 0 1",
        "read -P 1 -s 10 0 1",
        "read -b 1 512",
        "write -u 0 512",
        "write -z -P 1 0 512",
        "write -n 0 1",
        "write -c 0 512",
        "write 0x1k 1",
        "readv 0 3G",
        "aio_write -z 0 512 512",
        "discard 0 5G",
        "truncate -m foo 1M",
        "sleep x",
        "help nothing",
        "bogus",
        "length x",
      ),
      "IMG",
    ],
  },
  { name: "read-only image", args: ["-r", "-f", "raw", ...cmds("write 0 1", "read 0 1"), "IMG"] },
  {
    name: "open and close",
    args: cmds("open -o driver=raw IMG", "length", "close", "length", "open -r IMG", "open IMG"),
  },
  {
    name: "reopen",
    args: [
      "-f",
      "raw",
      ...cmds("reopen -r", "write 0 1", "reopen -w", "write 0 1", "reopen x"),
      "IMG",
    ],
  },
  { name: "bad main option", args: ["-f", "raw", "--bogus", "IMG"] },
  {
    name: "a json: filename",
    args: [
      ...cmds("write -P 0x5a 0 4k", "read -P 0x5a 0 4k", "read 0 512", "length", "map", "info"),
      'json:{"driver":"raw","file":{"driver":"file","filename":"IMG"}}',
    ],
  },
  {
    name: "a json: filename with options a plain name cannot say",
    args: [
      ...cmds("write -P 7 0 512", "read -P 7 0 512", "read 4000 96", "length", "alloc 0 4k"),
      'json:{"driver":"raw","offset":512,"size":4096,"file":{"driver":"file","filename":"IMG"}}',
    ],
  },
  {
    name: "a json: filename under -f, which wins",
    args: ["-f", "raw", ...cmds("read 0 512"), 'json:{"driver":"qcow2","file.filename":"IMG"}'],
  },
  { name: "a json: filename that does not parse", args: [...cmds("read 0 512"), "json:{"] },
  {
    name: "open with json: filenames",
    args: cmds(
      'open json:{"driver":"raw","file":{"driver":"file","filename":"IMG"}}',
      "read 0 512",
      "close",
      "open json:[]",
      'open -o driver=qcow2 json:{"driver":"raw","file":{"filename":"IMG"}}',
      "open json:{'driver':'null-co','size':4096}",
      "length",
    ),
  },
  { name: "help", args: cmds("help", "help read", "help w", "help map") },
  {
    name: "VM state on raw",
    args: ["-f", "raw", ...cmds("write -b 0 512", "read -b 0 512"), "IMG"],
  },
  {
    name: "snapshot mode: writes go to a temporary overlay, the image stays",
    args: [
      "-s",
      "-f",
      "raw",
      ...cmds("write -P 7 4k 8k", "read -P 7 4k 8k", "read -P 0 0 4k", "map", "length"),
      "IMG",
    ],
  },
];

for (const sc of SCENARIOS) {
  Deno.test(`blockgraph io matches qemu-io: ${sc.name}`, async () => {
    await withDir(async (dir) => {
      const q = `${dir}/q.img`;
      const b = `${dir}/b.img`;
      await image(q, sc.size ?? 1 << 20);
      await Deno.copyFile(q, b);
      const theirs = await qemuIo(sc.args.map((a) => a.replaceAll("IMG", q)));
      const mine = await runOurIo(sc.args.map((a) => a.replaceAll("IMG", b)));
      assertEquals(
        { status: mine.code, out: mask(mine.out, b), err: mask(mine.err, b) },
        { status: theirs.code, out: mask(theirs.out, q), err: mask(theirs.err, q) },
      );
      assertEquals(await Deno.readFile(b), await Deno.readFile(q));
    });
  });
}

Deno.test("blockgraph io reads an image whose header names a json: backing file as qemu-io", async () => {
  await withDir(async (dir) => {
    await image(`${dir}/base.raw`, 1 << 20);
    await runPeer("qemu-io", ["-f", "raw", "-c", "write -q -P 0x5a 0 64k", `${dir}/base.raw`]);
    const backing = `json:{"driver":"raw","file":{"driver":"file","filename":"${dir}/base.raw"}}`;
    const create = await runPeer("qemu-img", [
      "create",
      "-q",
      "-f",
      "qcow2",
      "-b",
      backing,
      "-F",
      "raw",
      `${dir}/top.qcow2`,
    ]);
    assertEquals(create.code, 0, create.err);
    const args = [
      ...cmds("read -P 0x5a 0 64k", "read -P 0 64k 64k", "map", "alloc 0 128k", "length"),
      `${dir}/top.qcow2`,
    ];
    const theirs = await qemuIo(["-r", ...args]);
    const mine = await runOurIo(["-r", ...args]);
    assertEquals(
      { status: mine.code, out: mask(mine.out, dir), err: mine.err },
      { status: theirs.code, out: mask(theirs.out, dir), err: theirs.err },
    );
    assertEquals(theirs.code, 0);
  });
});

/**
 * Runs `commands` through qemu-io and ours on two copies of a new qcow2 made with `opts`
 * (create options, then the size), and compares output, status and (`files`) the files.
 */
async function onQcow2(
  dir: string,
  name: string,
  opts: string[],
  commands: string[],
  files: boolean,
): Promise<void> {
  const q = `${dir}/q.qcow2`;
  const b = `${dir}/b.qcow2`;
  const r = await runPeer("qemu-img", [
    "create",
    "-q",
    "-f",
    "qcow2",
    ...opts.slice(0, -1),
    q,
    opts.at(-1)!,
  ]);
  assertEquals(r.code, 0, r.err);
  await Deno.copyFile(q, b);
  const theirs = await qemuIo([...commands, q]);
  const mine = await runOurIo([...commands, b]);
  assertEquals(
    { status: mine.code, out: mask(mine.out, b), err: mask(mine.err, b) },
    { status: theirs.code, out: mask(theirs.out, q), err: mask(theirs.err, q) },
    name,
  );
  if (files) assertEquals(await Deno.readFile(b), await Deno.readFile(q), `${name}: the files`);
}

Deno.test("blockgraph io info matches qemu-io on qcow2 images (cluster size, VM state offset, specific facts)", async () => {
  await withDir(async (dir) => {
    const cases: [string, string[]][] = [
      ["v3 64M", ["-o", "cluster_size=64k", "64M"]],
      ["v2", ["-o", "compat=0.10", "1G"]],
      ["extended L2, 128k clusters", ["-o", "extended_l2=on,cluster_size=128k", "3G"]],
      ["lazy refcounts, 4-bit refcounts", ["-o", "lazy_refcounts=on,refcount_bits=4", "1M"]],
    ];
    for (const [name, opts] of cases) await onQcow2(dir, name, opts, ["-c", "info"], false);
  });
});

Deno.test("blockgraph io read -b/write -b reach qcow2's VM state area as qemu-io's, byte for byte", async () => {
  await withDir(async (dir) => {
    const cases: [string, string[]][] = [
      ["v3", ["-o", "cluster_size=64k", "64M"]],
      ["v2", ["-o", "compat=0.10", "1M"]],
      ["extended L2", ["-o", "extended_l2=on", "1M"]],
    ];
    const commands = cmds(
      "write -b -P 5 0 4k",
      "read -b -P 5 0 4k",
      "read -b -P 0 4k 4k",
      "write -b -P 7 1M 128k",
      "read -b -P 7 1M 128k",
      "write -b 100 512",
      "map",
    );
    for (const [name, opts] of cases) await onQcow2(dir, name, opts, commands, true);
  });
});
