/**
 * An NBD export as the target of `img create`, `img convert` (without `-n`) and `img resize`,
 * as qemu-img 7.2 takes it: the `nbd` protocol cannot create, so creating opens the export,
 * refuses a size larger than it (`Cannot grow NBD nodes`) and zeroes its first sector; raw
 * and qcow2 images are made on it and converted into it; resize succeeds only to the export's
 * own size; a missing export or a read-only one fails with QEMU's words. qemu-nbd on unix
 * sockets in a temporary directory; every peer process has a timeout.
 *
 * @module
 */

import { deepStrictEqual as assertEquals } from "node:assert";
import { runOurImg } from "./cli_run.ts";
import { ensurePeers } from "./peers.ts";
import { listening, mustPeer, type PeerServer, runPeer, spawnPeer } from "./peer_run.ts";

const MIB = 1 << 20;

Deno.test("img create, convert and resize on an NBD export, as qemu-img", async () => {
  await ensurePeers(["qemu-nbd", "qemu-img", "qemu-io"]);
  const dir = await Deno.makeTempDir({ prefix: "nbd-create-" });
  const servers: PeerServer[] = [];
  const serve = async (name: string, file: string, extra: string[] = []) => {
    const sock = `${dir}/${name}.sock`;
    servers.push(
      await spawnPeer(
        "qemu-nbd",
        ["-k", sock, "-t", "-x", "disk", "-f", "raw", "--shared=8", ...extra, file],
        () => listening(sock),
      ),
    );
    return `nbd+unix:///disk?socket=${sock}`;
  };
  try {
    const source = new Uint8Array(MIB);
    source.fill(0x5a, 65536, 196608);
    await Deno.writeFile(`${dir}/src.raw`, source);
    const old = new Uint8Array(MIB).fill(0x11);
    // Each run (qemu-img's, then ours) starts from the same old contents of the export.
    const reset = () => Deno.writeFile(`${dir}/disk.raw`, old);
    await reset();
    const uri = await serve("rw", `${dir}/disk.raw`);
    const roUri = await serve("ro", `${dir}/src.raw`, ["-r"]);
    const missing = uri.replace("///disk", "///nosuch");
    const cases = [
      ["create", "-f", "raw", uri, "1M"],
      ["create", "-f", "raw", uri, "512k"],
      ["create", "-f", "raw", uri, "2M"],
      ["create", "-f", "raw", "-o", "preallocation=full", uri, "1M"],
      ["create", "-f", "qcow2", uri, "1M"],
      ["create", "-f", "raw", missing, "1M"],
      ["create", "-f", "raw", roUri, "1M"],
      ["convert", "-f", "raw", "-O", "raw", `${dir}/src.raw`, uri],
      ["convert", "-f", "raw", "-O", "qcow2", `${dir}/src.raw`, uri],
      ["convert", "-f", "raw", "-O", "raw", `${dir}/src.raw`, missing],
      ["resize", "-f", "raw", uri, "2M"],
      ["resize", "-f", "raw", "--shrink", uri, "512k"],
      ["resize", "-f", "raw", uri, "1M"],
    ];
    for (const args of cases) {
      await reset();
      const theirs = await runPeer("qemu-img", args);
      const theirData = await Deno.readFile(`${dir}/disk.raw`);
      const theirInfo = await runPeer("qemu-img", ["info", uri]);
      await reset();
      const ours = await runOurImg(args);
      const ourData = await Deno.readFile(`${dir}/disk.raw`);
      const ourInfo = await runOurImg(["info", uri]);
      assertEquals(ours, theirs, args.join(" "));
      if (args[0] === "convert" && ours.code === 0) {
        // qemu-img compare reads through the image format on the export.
        await mustPeer("qemu-img", ["compare", "-f", "raw", `${dir}/src.raw`, uri]);
      }
      // A qcow2 image holds the same data but may lay it out differently: compare what
      // info says of it, and the bytes only for raw.
      assertEquals(ourInfo, theirInfo, `info after ${args.join(" ")}`);
      if (!args.includes("qcow2")) {
        assertEquals(ourData, theirData, `export contents after ${args.join(" ")}`);
      }
    }
  } finally {
    for (const s of servers) await s.stop();
    await Deno.remove(dir, { recursive: true });
  }
});
