/**
 * Encrypted qcow2 images qemu-img 7.2 writes (the old AES method and LUKS with several
 * ciphers): `img info` shows them as `qemu-img info` does, human and JSON, an overlay's
 * backing chain through one included, without a key (both open them for their metadata only).
 * Everything that would read their data refuses them (blockgraph does not decrypt), and a
 * LUKS header that is not one is refused with QEMU's message.
 *
 * @module
 */

import { deepStrictEqual as assertEquals } from "node:assert";
import { runOurImg, runOurIo } from "./cli_run.ts";
import { ensurePeers } from "./peers.ts";
import { runPeer } from "./peer_run.ts";
import { expect, withDir } from "./interop_qcow2_helpers.ts";

/**
 * qemu-img creates LUKS images after timing its key derivation, which fails now and then
 * ("Unable to get accurate CPU usage"): a few tries.
 */
async function createEncrypted(dir: string, name: string, opts: string): Promise<void> {
  let last = "";
  for (let i = 0; i < 5; i++) {
    const r = await runPeer("qemu-img", [
      "create",
      "-q",
      "--object",
      "secret,id=s0,data=pass",
      "-f",
      "qcow2",
      "-o",
      `${opts},encrypt.key-secret=s0`,
      name,
      "1M",
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
      const theirs = await runPeer("qemu-img", args, { cwd: dir });
      const mine = await runOurImg(args, dir);
      assertEquals({ args, ...mine }, { args, ...theirs });
      assertEquals(mine.code, 0, mine.err);
    }
  });
});

Deno.test("encrypted qcow2 data is refused, and a broken LUKS header too", async () => {
  await ensurePeers(["qemu-img"]);
  await withDir(async (dir) => {
    await createEncrypted(dir, "luks.qcow2", "encrypt.format=luks,encrypt.iter-time=10");
    const refusal = "qcow2: encrypted images (crypt method 2) are not supported";
    for (
      const args of [
        ["check", "luks.qcow2"],
        ["map", "luks.qcow2"],
        ["convert", "-O", "raw", "luks.qcow2", "out.raw"],
        ["compare", "luks.qcow2", "luks.qcow2"],
      ]
    ) {
      const r = await runOurImg(args, dir);
      expect(r.code !== 0, `${args.join(" ")} succeeded`);
      expect(r.err.includes(refusal), `${args.join(" ")}: ${r.err}`);
    }
    const io = await runOurIo(["-c", "read 0 512", "luks.qcow2"], dir);
    expect(io.err.includes(refusal), `io read: ${io.err}`);
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
