/**
 * Image locking against QEMU's tools: while qemu-nbd serves an image writable, our img and
 * io refuse it as qemu-img and qemu-io do (same messages, same exit status), and while our
 * daemon serves one, qemu-img and qemu-io refuse it; `-U` (force-share) reads beside either.
 *
 * @module
 */

import { deepStrictEqual as assertEquals } from "node:assert";
import { addMonitor, applyAction, createDaemon } from "../packages/cli/daemon/run_daemon.ts";
import { TestQmpClient } from "../packages/cli/daemon/testing_qmp_client.ts";
import { runOurImg, runOurIo } from "./cli_run.ts";
import { ensurePeers } from "./peers.ts";
import { listening, type PeerResult, runPeer, spawnPeer } from "./peer_run.ts";

const COMMANDS: [string, string[]][] = [
  ["img", ["info", "disk.qcow2"]],
  ["img", ["check", "disk.qcow2"]],
  ["img", ["info", "-U", "disk.qcow2"]],
  ["io", ["-c", "read 0 4k", "disk.qcow2"]],
  ["io", ["-r", "-c", "read 0 4k", "disk.qcow2"]],
  ["io", ["-r", "-U", "-c", "read 0 4k", "disk.qcow2"]],
];

const norm = (r: PeerResult) => ({
  code: r.code,
  out: r.out.replace(/^\S+ \S*, \d+ ops; .*$/gm, "STATS"),
  err: r.err.replace(/^\S*qemu-io: /gm, "qemu-io: "),
});

async function both(dir: string, what: string): Promise<void> {
  for (const [tool, args] of COMMANDS) {
    const theirs = await runPeer(tool === "img" ? "qemu-img" : "qemu-io", args, { cwd: dir });
    const mine = await (tool === "img" ? runOurImg(args, dir) : runOurIo(args, dir));
    assertEquals({ what, tool, args, ...norm(mine) }, { what, tool, args, ...norm(theirs) });
  }
}

/** qemu-nbd serving a new 16 MiB `disk.qcow2` in `dir`, holding its image locks. */
async function servedByQemuNbd(dir: string) {
  await runPeer("qemu-img", ["create", "-q", "-f", "qcow2", "disk.qcow2", "16M"], { cwd: dir });
  const sock = `${dir}/nbd.sock`;
  return await spawnPeer(
    "qemu-nbd",
    ["-f", "qcow2", "-t", "-x", "disk", "-k", sock, `${dir}/disk.qcow2`],
    () => listening(sock),
  );
}

Deno.test("image locks: qemu-nbd's image is refused by our img and io as by qemu-img and qemu-io", async () => {
  await ensurePeers(["qemu-img", "qemu-io", "qemu-nbd"]);
  const dir = await Deno.makeTempDir();
  try {
    const qnbd = await servedByQemuNbd(dir);
    try {
      await both(dir, "qemu-nbd serves the image");
    } finally {
      await qnbd.stop();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("image locks: our daemon's image is refused by qemu-img and qemu-io, as by our img and io", async () => {
  await ensurePeers(["qemu-img", "qemu-io"]);
  const dir = await Deno.makeTempDir();
  const daemon = createDaemon();
  try {
    await runPeer("qemu-img", ["create", "-q", "-f", "qcow2", "disk.qcow2", "16M"], { cwd: dir });
    addMonitor(daemon, `${dir}/qmp.sock`);
    const q = await TestQmpClient.connect(`${dir}/qmp.sock`);
    await q.ok("blockdev-add", {
      driver: "qcow2",
      "node-name": "q0",
      file: { driver: "file", filename: `${dir}/disk.qcow2` },
    });
    await q.ok("nbd-server-start", { addr: { type: "unix", data: { path: `${dir}/n.sock` } } });
    await q.ok("block-export-add", {
      type: "nbd",
      id: "e0",
      "node-name": "q0",
      writable: true,
    });
    await both(dir, "our daemon serves the image");
    await q.close();
  } finally {
    await daemon.shutdown();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("image locks: blockdev-change-medium of an image qemu-nbd serves says so as QEMU does", async () => {
  await ensurePeers(["qemu-img", "qemu-nbd"]);
  const dir = await Deno.makeTempDir();
  const daemon = createDaemon();
  try {
    const qnbd = await servedByQemuNbd(dir);
    try {
      addMonitor(daemon, `${dir}/qmp.sock`);
      await applyAction(daemon, { kind: "drive", text: "", options: { id: "cd0" } });
      const q = await TestQmpClient.connect(`${dir}/qmp.sock`);
      for (const mode of ["read-write", "read-only"]) {
        const e = await q.fails("blockdev-change-medium", {
          id: "cd0",
          filename: `${dir}/disk.qcow2`,
          "read-only-mode": mode,
        });
        // qemu-system-x86_64 7.2 says the same (no "Could not open" in front).
        assertEquals(
          e.desc,
          mode === "read-write"
            ? 'Failed to get "write" lock'
            : 'Failed to get shared "write" lock',
        );
      }
      assertEquals(q.events.filter((m) => m.event === "DEVICE_TRAY_MOVED"), []);
      await q.close();
    } finally {
      await qnbd.stop();
    }
  } finally {
    await daemon.shutdown();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("image locks: convert will not copy a raw image qemu-nbd writes, as qemu-img convert; info and -U still read it", async () => {
  await ensurePeers(["qemu-img", "qemu-nbd"]);
  const dir = await Deno.makeTempDir();
  try {
    await runPeer("qemu-img", ["create", "-q", "-f", "raw", "r.raw", "1M"], { cwd: dir });
    const sock = `${dir}/nbd.sock`;
    const qnbd = await spawnPeer(
      "qemu-nbd",
      ["-f", "raw", "-t", "-x", "disk", "-k", sock, `${dir}/r.raw`],
      () => listening(sock),
    );
    try {
      // A raw node passes its parent's sharing down to the file, so only convert's own
      // refusal to share writes (BDRV_O_NO_SHARE) keeps it from copying a moving image.
      for (
        const args of [
          ["convert", "-O", "raw", "r.raw", "o.raw"],
          ["convert", "-U", "-O", "raw", "r.raw", "o.raw"],
          ["info", "r.raw"],
        ]
      ) {
        await Deno.remove(`${dir}/o.raw`).catch(() => {});
        const theirs = await runPeer("qemu-img", args, { cwd: dir });
        await Deno.remove(`${dir}/o.raw`).catch(() => {});
        const mine = await runOurImg(args, dir);
        assertEquals({ args, ...norm(mine) }, { args, ...norm(theirs) });
      }
    } finally {
      await qnbd.stop();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
