/**
 * The `nbd` driver's `x-dirty-bitmap` option, as QEMU 7.2's: block status read from another
 * metadata context than `base:allocation`. qemu-nbd exports a qcow2 image with a dirty
 * bitmap (`-B`) and a three-deep backing chain with `qemu:allocation-depth` (`-A`); `img map`
 * and `io -c alloc/map` with `x-dirty-bitmap=qemu:dirty-bitmap:NAME` or
 * `x-dirty-bitmap=qemu:allocation-depth` print what qemu-img and qemu-io print, and a context
 * the server does not have fails the open as QEMU's does. Unix sockets in a temporary
 * directory; every peer process has a timeout.
 *
 * @module
 */

import { sameAsQemu } from "./cli_run.ts";
import { ensurePeers } from "./peers.ts";
import { listening, mustPeer, type PeerServer, spawnPeer } from "./peer_run.ts";

const qcow2 = (path: string, extra: string[] = []) =>
  mustPeer("qemu-img", ["create", "-q", "-f", "qcow2", ...extra, path, "4M"]);
const qemuIo = (path: string, cmd: string) => mustPeer("qemu-io", ["-c", cmd, path]);

Deno.test("x-dirty-bitmap reads a dirty bitmap or the allocation depth as block status, as QEMU's", async () => {
  await ensurePeers(["qemu-nbd", "qemu-io", "qemu-img"]);
  const dir = await Deno.makeTempDir({ prefix: "nbd-x-dirty-bitmap-" });
  const servers: PeerServer[] = [];
  try {
    // A bitmap recording two writes after the first.
    await qcow2(`${dir}/bm.qcow2`);
    await qemuIo(`${dir}/bm.qcow2`, "write -P 1 0 64k");
    await mustPeer("qemu-img", ["bitmap", "--add", `${dir}/bm.qcow2`, "bm0"]);
    await qemuIo(`${dir}/bm.qcow2`, "write -P 2 1M 64k");
    await qemuIo(`${dir}/bm.qcow2`, "write -P 3 3M 128k");
    // Depths 1, 2 and 3 (the last reads as 2, as QEMU's client takes it).
    await qcow2(`${dir}/b0.qcow2`);
    await qemuIo(`${dir}/b0.qcow2`, "write -P 1 2M 512k");
    await qcow2(`${dir}/b1.qcow2`, ["-b", `${dir}/b0.qcow2`, "-F", "qcow2"]);
    await qemuIo(`${dir}/b1.qcow2`, "write -P 2 0 1M");
    await qcow2(`${dir}/b2.qcow2`, ["-b", `${dir}/b1.qcow2`, "-F", "qcow2"]);
    await qemuIo(`${dir}/b2.qcow2`, "write -P 3 512k 64k");
    const serve = async (sock: string, args: string[]) => {
      servers.push(
        await spawnPeer(
          "qemu-nbd",
          ["-k", sock, "-t", "-r", "-x", "disk", "-f", "qcow2", ...args],
          () => listening(sock),
        ),
      );
    };
    await serve(`${dir}/bm.sock`, ["-B", "bm0", `${dir}/bm.qcow2`]);
    await serve(`${dir}/ad.sock`, ["-A", `${dir}/b2.qcow2`]);
    const opts = (sock: string, ctx: string) =>
      `driver=nbd,server.type=unix,server.path=${dir}/${sock},export=disk,x-dirty-bitmap=${ctx}`;
    for (
      const o of [
        opts("bm.sock", "qemu:dirty-bitmap:bm0"),
        opts("ad.sock", "qemu:allocation-depth"),
      ]
    ) {
      await sameAsQemu("img", ["map", "--output=json", "--image-opts", o]);
      await sameAsQemu("img", ["map", "--image-opts", o]);
      await sameAsQemu("io", ["-r", "--image-opts", "-c", "alloc 0 4M", "-c", "map", o]);
    }
    await sameAsQemu("io", [
      "-r",
      "--image-opts",
      "-c",
      "alloc 0 4M",
      opts("bm.sock", "qemu:dirty-bitmap:nosuch"),
    ]);
  } finally {
    for (const s of servers) await s.stop();
    await Deno.remove(dir, { recursive: true });
  }
});
