/**
 * Encrypted qcow2 images qemu-img 7.2 writes (the old AES method and LUKS with several
 * ciphers): `img info` shows them as `qemu-img info` does, human and JSON, an overlay's
 * backing chain through one included, without a key (both open them for their metadata only).
 * With the key (`encrypt.key-secret`) their data reads as qemu-img reads it (AES, and LUKS
 * in XTS and in CBC with ESSIV and plain IVs); without it, with a wrong one or with a format
 * the header does not have, both refuse with the same message; a LUKS header that is not one
 * is refused with QEMU's message. What blockgraph writes into a LUKS image (new clusters with
 * their backing file's head and tail, extended L2 subclusters, overwrites, zeroes) qemu-io
 * reads back and qemu-img checks clean. LUKS images blockgraph creates (`img create`,
 * `convert -O qcow2`), qemu-img and qemu-io read, write and check; `img amend` changes their
 * key slots as `qemu-img amend` does, refusals included.
 *
 * @module
 */

import { deepStrictEqual as assertEquals } from "node:assert";
import { runOurImg, runOurIo, sameAsQemu } from "./cli_run.ts";
import { ensurePeers } from "./peers.ts";
import { type PeerResult, runPeer } from "./peer_run.ts";
import { expect, withDir } from "./interop_qcow2_helpers.ts";

/**
 * qemu-img creates LUKS images after timing its key derivation, which fails now and then
 * ("Unable to get accurate CPU usage": 6 and 8 tries in 20 here, loaded and idle): up to 25
 * tries, each a fraction of a second, so that a run of failures is out of reach (5 tries
 * failed one full-suite run in about 15 images).
 */
async function createEncrypted(
  dir: string,
  name: string,
  opts: string,
  extra: string[] = [],
  size = "1M",
): Promise<void> {
  let last = "";
  for (let i = 0; i < 25; i++) {
    const r = await runPeer("qemu-img", [
      "create",
      "-q",
      "--object",
      "secret,id=s0,data=pass",
      "-f",
      "qcow2",
      ...extra,
      "-o",
      `${opts},encrypt.key-secret=s0`,
      name,
      size,
    ], { cwd: dir });
    if (r.code === 0) return;
    last = r.err;
  }
  throw new Error(`qemu-img could not create ${name} (${opts}): ${last}`);
}

Deno.test("img info shows encrypted qcow2 images as qemu-img info, without a key", async () => {
  await ensurePeers(["qemu-img", "qemu-io"]);
  await withDir(async (dir) => {
    const images: [string, string][] = [
      ["aes.qcow2", "encrypt.format=aes"],
      ["luks.qcow2", "encrypt.format=luks,encrypt.iter-time=10"],
      [
        "serpent.qcow2",
        "encrypt.format=luks,encrypt.iter-time=10,encrypt.cipher-alg=serpent-192,cluster_size=4k",
      ],
      [
        "twofish.qcow2",
        "encrypt.format=luks,encrypt.iter-time=10,encrypt.cipher-alg=twofish-256," +
        "encrypt.cipher-mode=cbc,encrypt.hash-alg=sha512",
      ],
    ];
    for (const [name, opts] of images) await createEncrypted(dir, name, opts);
    const ov = await runPeer("qemu-img", [
      "create",
      "-q",
      "-f",
      "qcow2",
      "-b",
      "luks.qcow2",
      "-F",
      "qcow2",
      "ov.qcow2",
    ], { cwd: dir });
    expect(ov.code === 0, ov.err);
    const cases: string[][] = [];
    for (const [name] of images) cases.push(["info", name], ["info", "--output=json", name]);
    cases.push(["info", "--backing-chain", "ov.qcow2"], [
      "info",
      "-U",
      "-f",
      "qcow2",
      "luks.qcow2",
    ]);
    for (const args of cases) {
      const mine = await sameAsQemu("img", args, dir);
      assertEquals(mine.code, 0, mine.err);
    }
  });
});

/** `--image-opts` of image `name` opened with secret `s0`. */
function keyed(name: string): string {
  return `driver=qcow2,file.filename=${name},encrypt.key-secret=s0`;
}

/** Secret `s0`, password "pass", as `--object`. */
const SECRET = ["--object", "secret,id=s0,data=pass"];

/**
 * Runs qemu-io (`"qemu-io"`) or our io (`"ours"`) with `commands` on image `name` opened with
 * secret `s0`, `extra` options before the image.
 */
function keyedIo(
  who: "qemu-io" | "ours",
  dir: string,
  name: string,
  commands: string[],
  extra: string[] = [],
): Promise<PeerResult> {
  const args = [...SECRET, ...extra, "--image-opts", keyed(name)];
  for (const c of commands) args.push("-c", c);
  return who === "ours" ? runOurIo(args, dir) : runPeer("qemu-io", args, { cwd: dir });
}

/** {@link keyedIo}, which must succeed with every pattern verified. */
async function expectIo(
  who: "qemu-io" | "ours",
  dir: string,
  name: string,
  commands: string[],
  extra: string[] = [],
): Promise<void> {
  const r = await keyedIo(who, dir, name, commands, extra);
  expect(r.code === 0 && !r.out.includes("verification failed"), `${name}: ${r.out}${r.err}`);
}

/** `qemu-img check` of image `name` (opened with secret `s0` among `secrets`) finds it clean. */
async function expectClean(dir: string, name: string, secrets = SECRET): Promise<void> {
  const args = ["check", ...secrets, "--image-opts", keyed(name)];
  const r = await runPeer("qemu-img", args, { cwd: dir });
  expect(r.code === 0, `${name}: ${r.out}${r.err}`);
}

Deno.test("encrypted qcow2 data reads as qemu-img reads it, with the key", async () => {
  await ensurePeers(["qemu-img", "qemu-io"]);
  await withDir(async (dir) => {
    const images: [string, string][] = [
      ["aes.qcow2", "encrypt.format=aes"],
      ["xts.qcow2", "encrypt.format=luks,encrypt.iter-time=10"],
      [
        "essiv.qcow2",
        "encrypt.format=luks,encrypt.iter-time=10,encrypt.cipher-alg=aes-128," +
        "encrypt.cipher-mode=cbc,encrypt.ivgen-alg=essiv,cluster_size=4k",
      ],
      [
        "plain.qcow2",
        "encrypt.format=luks,encrypt.iter-time=10,encrypt.cipher-alg=aes-256," +
        "encrypt.cipher-mode=cbc,encrypt.ivgen-alg=plain,encrypt.hash-alg=sha1",
      ],
    ];
    for (const [name, opts] of images) {
      await createEncrypted(dir, name, opts);
      // Data in the middle of a cluster, across a cluster boundary and a lone sector.
      await expectIo("qemu-io", dir, name, [
        "write -P 0xab 0 64k",
        "write -P 0x11 65536 4k",
        "write -P 0x33 520192 8192",
        "write -P 0x22 1048064 512",
      ]);
      const theirs = await runPeer("qemu-img", [
        "convert",
        ...SECRET,
        "--image-opts",
        keyed(name),
        "-O",
        "raw",
        `${name}.q.raw`,
      ], { cwd: dir });
      expect(theirs.code === 0, theirs.err);
      const mine = await runOurImg([
        "convert",
        ...SECRET,
        "--image-opts",
        keyed(name),
        "-O",
        "raw",
        `${name}.o.raw`,
      ], dir);
      expect(mine.code === 0, `${name}: ${mine.err}`);
      const a = await Deno.readFile(`${dir}/${name}.q.raw`);
      const b = await Deno.readFile(`${dir}/${name}.o.raw`);
      expect(a.some((x) => x !== 0), `${name}: qemu-img read zeros`);
      expect(a.length === b.length && a.every((x, i) => x === b[i]), `${name}: data differs`);
      // Unaligned reads go through whole sectors.
      await expectIo("ours", dir, name, ["read -P 0x11 65536 4k", "read -P 0x22 1048100 100"], [
        "-r",
      ]);
      for (
        const args of [
          [
            "compare",
            ...SECRET,
            "--image-opts",
            keyed(name),
            `driver=raw,file.filename=${name}.q.raw`,
          ],
          ["check", ...SECRET, "--image-opts", keyed(name)],
          ["map", "--output=json", ...SECRET, "--image-opts", keyed(name)],
        ]
      ) {
        await sameAsQemu("img", args, dir);
      }
    }
  });
});

Deno.test("what blockgraph writes into a LUKS image, qemu-io reads back and qemu-img checks", async () => {
  await ensurePeers(["qemu-img", "qemu-io"]);
  await withDir(async (dir) => {
    await Deno.writeFile(`${dir}/base.raw`, new Uint8Array(4 << 20).fill(0x42));
    const images: [string, string][] = [
      ["plain.qcow2", "encrypt.format=luks,encrypt.iter-time=10"],
      ["over.qcow2", "encrypt.format=luks,encrypt.iter-time=10"],
      [
        "ext.qcow2",
        "encrypt.format=luks,encrypt.iter-time=10,extended_l2=on,cluster_size=128k",
      ],
    ];
    for (const [name, opts] of images) {
      const backed = name !== "plain.qcow2";
      const backing = backed ? ["-b", "base.raw", "-F", "raw"] : [];
      await createEncrypted(dir, name, opts, backing, "4M");
      // A new cluster's head and tail (from the backing file or zeros), a whole cluster, an
      // overwrite in place, an unaligned write, zeroes.
      await expectIo("ours", dir, name, [
        "write -P 0x99 70000 3000",
        "write -P 0x77 262144 131072",
        "write -P 0x66 270000 100",
        "write -z 1048576 65536",
      ]);
      const old = backed ? "0x42" : "0";
      await expectIo("qemu-io", dir, name, [
        `read -P ${old} 0 70000`,
        "read -P 0x99 70000 3000",
        `read -P ${old} 73000 189144`,
        "read -P 0x77 262144 7856",
        "read -P 0x66 270000 100",
        "read -P 0x77 270100 123116",
        "read -P 0 1048576 65536",
      ]);
      await expectClean(dir, name);
    }
    // Compressed clusters are never encrypted: refused, as the old AES method is for writing.
    const comp = await runOurIo([
      ...SECRET,
      "--image-opts",
      keyed("plain.qcow2"),
      "-c",
      "write -c 0 64k",
    ], dir);
    expect(
      (comp.out + comp.err).includes("write failed: Operation not supported"),
      comp.out + comp.err,
    );
    await createEncrypted(dir, "aes.qcow2", "encrypt.format=aes");
    const aes = await runOurIo(
      [...SECRET, "--image-opts", keyed("aes.qcow2"), "-c", "write 0 512"],
      dir,
    );
    expect(aes.code !== 0 && aes.err.includes("old AES method is not supported"), aes.err);
  });
});

/** `img convert` of `opts` with password `password` as secret s0, to `out.FMT` in `fmt`. */
function convertWith(password: string, opts: string, fmt: string): string[] {
  const secret = `secret,id=s0,data=${password}`;
  return ["convert", "--object", secret, "--image-opts", opts, "-O", fmt, `out.${fmt}`];
}

Deno.test("encrypted qcow2 images without their key, with a wrong one, and a broken LUKS header", async () => {
  await ensurePeers(["qemu-img"]);
  await withDir(async (dir) => {
    await createEncrypted(dir, "luks.qcow2", "encrypt.format=luks,encrypt.iter-time=10");
    await Deno.writeFile(`${dir}/plain.raw`, new Uint8Array(1 << 20));
    for (
      const args of [
        ["check", "luks.qcow2"],
        ["map", "luks.qcow2"],
        ["convert", "-O", "raw", "luks.qcow2", "out.raw"],
        ["compare", "luks.qcow2", "luks.qcow2"],
        convertWith("nope", keyed("luks.qcow2"), "raw"),
        convertWith("pass", `${keyed("luks.qcow2")},encrypt.format=aes`, "raw"),
        convertWith("pass", "driver=raw,file.filename=plain.raw", "qcow2"),
        ["info", "--image-opts", "driver=qcow2,file.filename=plain.raw,encrypt.format=luks"],
      ]
    ) {
      const theirs = await runPeer("qemu-img", args, { cwd: dir });
      const mine = await runOurImg(args, dir);
      assertEquals({ args, code: mine.code, err: mine.err }, {
        args,
        code: theirs.code,
        err: theirs.err,
      });
    }
    // The header extension names the LUKS header; spoil its magic.
    const path = `${dir}/luks.qcow2`;
    const file = await Deno.open(path, { read: true, write: true });
    try {
      const head = new Uint8Array(4096);
      await file.read(head);
      const v = new DataView(head.buffer);
      let at = v.getUint32(100);
      let luks = -1;
      for (;;) {
        const type = v.getUint32(at);
        const len = v.getUint32(at + 4);
        if (type === 0) break;
        if (type === 0x0537be77) luks = Number(v.getBigUint64(at + 8));
        at += 8 + Math.ceil(len / 8) * 8;
      }
      expect(luks > 0, "no crypto header extension");
      await file.seek(luks, Deno.SeekMode.Start);
      await file.write(new TextEncoder().encode("XXXX"));
    } finally {
      file.close();
    }
    const theirs = await runPeer("qemu-img", ["info", "luks.qcow2"], { cwd: dir });
    const mine = await runOurImg(["info", "luks.qcow2"], dir);
    assertEquals(mine, theirs);
    expect(mine.err.includes("Volume is not in LUKS format"), mine.err);
  });
});

Deno.test("LUKS images blockgraph creates: qemu-img reads, writes and checks them", async () => {
  await ensurePeers(["qemu-img", "qemu-io"]);
  await withDir(async (dir) => {
    const images: [string, string][] = [
      ["xts.qcow2", ""],
      ["sha512.qcow2", ",encrypt.cipher-alg=aes-128,encrypt.hash-alg=sha512,cluster_size=4k"],
      [
        "essiv.qcow2",
        ",encrypt.cipher-alg=aes-256,encrypt.cipher-mode=cbc,encrypt.ivgen-alg=essiv,compat=0.10",
      ],
      ["prealloc.qcow2", ",preallocation=metadata"],
      ["ext.qcow2", ",extended_l2=on,preallocation=falloc"],
    ];
    for (const [name, extra] of images) {
      const opts = `encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10${extra}`;
      const c = await runOurImg(
        ["create", "-q", ...SECRET, "-f", "qcow2", "-o", opts, name, "4M"],
        dir,
      );
      expect(c.code === 0, `${name}: ${c.err}`);
      // qemu-img shows the LUKS header as blockgraph does.
      for (const args of [["info", name], ["check", ...SECRET, "--image-opts", keyed(name)]]) {
        const mine = await sameAsQemu("img", args, dir);
        expect(mine.code === 0, `${name}: ${mine.out}${mine.err}`);
      }
      // A new image reads as zeros (preallocated clusters too) in both.
      await expectIo("qemu-io", dir, name, ["read -P 0 0 4M"]);
      // qemu-io writes what blockgraph reads, and the other way round.
      await expectIo("qemu-io", dir, name, ["write -P 0x5a 100000 70000"]);
      await expectIo("ours", dir, name, [
        "read -P 0x5a 100000 70000",
        "write -P 0xc3 1000000 5000",
      ]);
      await expectIo("qemu-io", dir, name, [
        "read -P 0 0 100000",
        "read -P 0xc3 1000000 5000",
        "read -P 0 1005000 3189304",
      ]);
      await expectClean(dir, name);
    }
    // convert into a new LUKS image: the key secret opens the target it creates.
    const raw = new Uint8Array(3 << 20);
    raw.fill(0x17, 65536, 1 << 20);
    raw.fill(0x71, 2 << 20, (2 << 20) + 4096);
    await Deno.writeFile(`${dir}/src.raw`, raw);
    const cv = await runOurImg([
      "convert",
      ...SECRET,
      "-O",
      "qcow2",
      "-o",
      "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10",
      "src.raw",
      "enc.qcow2",
    ], dir);
    expect(cv.code === 0, cv.err);
    const cmp = await runPeer("qemu-img", [
      "compare",
      ...SECRET,
      "--image-opts",
      "driver=raw,file.filename=src.raw",
      keyed("enc.qcow2"),
    ], { cwd: dir });
    expect(cmp.code === 0, cmp.out + cmp.err);
    // Refused before any file is made: the old AES method, an external data file, a version 2
    // image preallocated, a cipher QEMU cannot open.
    for (
      const [opts, message] of [
        ["encrypt.format=aes", "old AES method"],
        ["encrypt.format=luks,data_file=d.raw", "external data file"],
        ["encrypt.format=luks,compat=0.10,preallocation=metadata", "needs compat=1.1"],
        ["encrypt.format=luks,encrypt.cipher-alg=aes-192,encrypt.cipher-mode=cbc", "96000"],
        ["encrypt.format=luks,encrypt.cipher-alg=twofish-256", "AES only"],
      ] as const
    ) {
      const r = await runOurImg([
        "create",
        ...SECRET,
        "-f",
        "qcow2",
        "-o",
        `${opts},encrypt.key-secret=s0`,
        "no.qcow2",
        "1M",
      ], dir);
      expect(r.code === 1 && r.err.includes(message), `${opts}: ${r.err}`);
      const made = await Deno.stat(`${dir}/no.qcow2`).then(() => true, () => false);
      expect(!made, `${opts}: no.qcow2 was created`);
    }
  });
});

Deno.test("img amend changes LUKS key slots as qemu-img amend does", async () => {
  await ensurePeers(["qemu-img", "qemu-io"]);
  await withDir(async (dir) => {
    const secrets = ["s0=pass", "s1=new", "s2=other"].flatMap((s) => {
      const [id, data] = s.split("=");
      return ["--object", `secret,id=${id},data=${data}`];
    });
    const opts = "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10";
    const c = await runOurImg([
      "create",
      "-q",
      ...secrets,
      "-f",
      "qcow2",
      "-o",
      opts,
      "a.qcow2",
      "1M",
    ], dir);
    expect(c.code === 0, c.err);
    await Deno.copyFile(`${dir}/a.qcow2`, `${dir}/b.qcow2`);
    const active = async (name: string) => {
      const r = await runPeer("qemu-img", ["info", "--output=json", name], { cwd: dir });
      const info = JSON.parse(r.out)["format-specific"].data.encrypt;
      return info.slots.map((s: { active: boolean }) => s.active);
    };
    const steps = [
      ["-o", "encrypt.state=active,encrypt.new-secret=s1,encrypt.iter-time=10"],
      ["-o", "encrypt.state=active,encrypt.new-secret=s2,encrypt.keyslot=1"],
      ["-o", "encrypt.state=active,encrypt.new-secret=s2,encrypt.keyslot=4,encrypt.iter-time=10"],
      ["-o", "encrypt.state=active,encrypt.new-secret=s2,encrypt.keyslot=9"],
      ["-o", "encrypt.state=active"],
      ["-o", "encrypt.state=bogus"],
      ["-o", "encrypt.new-secret=s2"],
      ["-o", "encrypt.state=inactive,encrypt.new-secret=s1"],
      ["-o", "encrypt.state=inactive"],
      ["-o", "encrypt.state=inactive,encrypt.keyslot=2"],
      ["-o", "encrypt.state=inactive,encrypt.keyslot=4,encrypt.old-secret=s1"],
      ["-o", "encrypt.state=inactive,encrypt.old-secret=s1"],
      ["-o", "encrypt.state=inactive,encrypt.old-secret=s1"],
      ["-o", "encrypt.state=inactive,encrypt.keyslot=4"],
      ["-o", "encrypt.state=inactive,encrypt.keyslot=0"],
      ["-o", "encrypt.format=luks"],
    ];
    for (const step of steps) {
      const args = (name: string) => ["amend", ...secrets, "--image-opts", keyed(name), ...step];
      // qemu-img times its key derivation before it adds a slot, and fails now and then
      // ("Unable to get accurate CPU usage"; see createEncrypted): tried again then.
      let theirs = await runPeer("qemu-img", args("a.qcow2"), { cwd: dir });
      for (let i = 0; i < 25 && theirs.err.includes("Unable to get accurate CPU usage"); i++) {
        theirs = await runPeer("qemu-img", args("a.qcow2"), { cwd: dir });
      }
      const mine = await runOurImg(args("b.qcow2"), dir);
      const norm = (err: string) => err.replaceAll("a.qcow2", "b.qcow2");
      assertEquals({ step, code: mine.code, err: mine.err }, {
        step,
        code: theirs.code,
        err: norm(theirs.err),
      });
      assertEquals({ step, slots: await active("b.qcow2") }, {
        step,
        slots: await active("a.qcow2"),
      });
    }
    // Slot 0 (pass) is the one left: it opens the image; new and other no longer do.
    for (const [id, works] of [["s0", true], ["s1", false], ["s2", false]] as const) {
      const r = await runPeer("qemu-io", [
        ...secrets,
        "--image-opts",
        `driver=qcow2,file.filename=b.qcow2,encrypt.key-secret=${id}`,
        "-c",
        "read 0 512",
      ], { cwd: dir });
      expect((r.code === 0) === works, `${id}: ${r.out}${r.err}`);
    }
    await expectClean(dir, "b.qcow2", secrets);
  });
});

Deno.test("a data cluster mapped onto the LUKS header is refused and marks the image corrupt", async () => {
  await ensurePeers(["qemu-img"]);
  await withDir(async (dir) => {
    const opts = "encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=10";
    await runOurImg(["create", "-q", ...SECRET, "-f", "qcow2", "-o", opts, "c.qcow2", "1M"], dir);
    await keyedIo("ours", dir, "c.qcow2", ["write 0 64k"]);
    // Guest cluster 0's L2 entry pointed at cluster 4, where the LUKS header starts.
    const file = await Deno.open(`${dir}/c.qcow2`, { read: true, write: true });
    try {
      const head = new Uint8Array(48);
      await file.read(head);
      const l1 = Number(new DataView(head.buffer).getBigUint64(40));
      const entry = new Uint8Array(8);
      await file.seek(l1, Deno.SeekMode.Start);
      await file.read(entry);
      const l2 = Number(new DataView(entry.buffer).getBigUint64(0) & 0x00fffffffffffe00n);
      new DataView(entry.buffer).setBigUint64(0, (1n << 63n) | BigInt(4 * 65536));
      await file.seek(l2, Deno.SeekMode.Start);
      await file.write(entry);
    } finally {
      file.close();
    }
    const w = await keyedIo("ours", dir, "c.qcow2", ["write 0 4k"]);
    // Refused (the event says "overlaps with crypto header"): without the check the write
    // went through and overwrote the LUKS header, and no password opened the image again.
    expect(w.out.includes("write failed: Input/output error"), w.out + w.err);
    // The key still opens the image (read-only: it is marked corrupt).
    const info = await runPeer("qemu-img", ["info", "c.qcow2"], { cwd: dir });
    expect(info.out.includes("corrupt: true"), info.out);
    const r = await runPeer("qemu-img", ["check", ...SECRET, "--image-opts", keyed("c.qcow2")], {
      cwd: dir,
    });
    expect(!r.err.includes("Invalid password") && !r.err.includes("LUKS"), r.err);
  });
});
