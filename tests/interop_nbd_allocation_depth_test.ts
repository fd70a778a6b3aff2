/**
 * `qemu:allocation-depth` against qemu-storage-daemon 7.2: the same `--blockdev`,
 * `--nbd-server` and `--export` arguments on both daemons, with and without
 * `allocation-depth=on`, give the same `nbdinfo --list` contexts and the same
 * `nbdinfo --map=qemu:allocation-depth` (or the same refusal), over unix sockets.
 *
 * @module
 */

import { deepStrictEqual as assertEquals } from "node:assert";
import { parseDaemonArgs } from "../packages/cli/daemon/daemon_options.ts";
import { applyAction, createDaemon } from "../packages/cli/daemon/run_daemon.ts";
import { ensurePeers } from "./peers.ts";
import { listening, runPeer, spawnPeer } from "./peer_run.ts";

/** The daemon arguments for `top.qcow2` (over `base.qcow2`) exported at `sock`. */
function daemonArgs(dir: string, sock: string, extra: string): string[] {
  return [
    "--blockdev",
    `driver=file,filename=${dir}/top.qcow2,node-name=f`,
    "--blockdev",
    "driver=qcow2,file=f,node-name=q",
    "--nbd-server",
    `addr.type=unix,addr.path=${sock}`,
    "--export",
    `type=nbd,id=e,node-name=q,name=e${extra}`,
  ];
}

/** What nbdinfo says of the export: its contexts, the depth map or why not, `qemu:` map. */
async function observe(sock: string): Promise<unknown> {
  const uri = `nbd+unix:///e?socket=${sock}`;
  const list = await runPeer("nbdinfo", ["--list", uri]);
  const contexts = list.out.split("contexts:\n")[1]?.split("\n").filter((l) =>
    l.startsWith("\t\t")
  );
  const depth = await runPeer("nbdinfo", ["--map=qemu:allocation-depth", uri]);
  const qemu = await runPeer("nbdinfo", ["--map=qemu:", uri]);
  return {
    contexts,
    depth: [depth.code, depth.out, depth.err],
    qemu: [qemu.code, qemu.out, qemu.err],
  };
}

Deno.test("qemu:allocation-depth is offered only with allocation-depth=on, as qemu-storage-daemon", async () => {
  await ensurePeers(["qemu-img", "qemu-io", "nbdinfo", "qemu-storage-daemon"]);
  const dir = await Deno.makeTempDir({ prefix: "bg-nbd-depth-" });
  try {
    const q = (args: string[]) => runPeer("qemu-img", args);
    await q(["create", "-q", "-f", "qcow2", `${dir}/base.qcow2`, "4M"]);
    await runPeer("qemu-io", ["-c", "write 0 64k", `${dir}/base.qcow2`]);
    await q(["create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", `${dir}/top.qcow2`]);
    await runPeer("qemu-io", ["-c", "write 1M 64k", `${dir}/top.qcow2`]);
    for (const extra of ["", ",allocation-depth=on", ",allocation-depth=off"]) {
      const theirSock = `${dir}/qsd.sock`;
      const qsd = await spawnPeer(
        "qemu-storage-daemon",
        daemonArgs(dir, theirSock, extra),
        () => listening(theirSock),
      );
      let theirs: unknown;
      try {
        theirs = await observe(theirSock);
      } finally {
        await qsd.stop();
      }
      const ourSock = `${dir}/ours.sock`;
      const daemon = createDaemon();
      let mine: unknown;
      try {
        for (const action of parseDaemonArgs(daemonArgs(dir, ourSock, extra)).actions) {
          await applyAction(daemon, action);
        }
        mine = await observe(ourSock);
      } finally {
        await daemon.shutdown();
      }
      assertEquals({ extra, ...mine as object }, { extra, ...theirs as object });
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
