/**
 * `blockgraph img bench` against qemu-img 7.2's `bench`: the same arguments give the same
 * messages, exit statuses and output lines (the run time aside).
 *
 * @module
 */

import { deepStrictEqual as assertEquals } from "node:assert";
import { runOurImg } from "./cli_run.ts";
import { type PeerResult, runPeer } from "./peer_run.ts";

const peer = (args: string[]) => runPeer("qemu-img", ["bench", ...args]);
const ours = (args: string[]) => runOurImg(["bench", ...args]);

const normalize = (r: PeerResult) => ({
  ...r,
  out: r.out.replace(/Run completed in \d+\.\d{3} seconds/, "Run completed in T seconds"),
});

Deno.test("img bench answers as qemu-img bench for good and bad arguments", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const img = `${dir}/a.img`;
    await Deno.writeFile(img, new Uint8Array(1 << 20));
    const cases: string[][] = [
      ["-f", "raw", "-c", "10", img],
      ["-f", "raw", "-c", "0x10", "-d", "3", "-S", "12k", "-o", "512", "-s", "1k", img],
      ["-f", "raw", "-c", "10", "-w", "-d", "2", "--flush-interval=4", "--no-drain", img],
      ["-f", "raw", "-c", "4", "-s", "0x1k", img],
      ["-f", "raw", "-c", "4", "-o", "1M", img],
      ["-f", "raw", "-c", "4", "-q", "-U", "-t", "writethrough", "-i", "threads", img],
      ["--image-opts", "-c", "3", "-d", "1", "driver=null-co,size=1M"],
      ["-c", "x", img],
      ["-c", "-1", img],
      ["-d", "2147483648", img],
      ["-s", "x", img],
      ["-s", "3G", img],
      ["-S", "x", img],
      ["-o", "-1", img],
      ["-o", "20E", img],
      ["-t", "bogus", img],
      ["-i", "bogus", img],
      ["--pattern=x", img],
      ["--flush-interval=x", img],
      ["--flush-interval=4", img],
      ["-w", "-d", "8", "--flush-interval=4", img],
      ["--image-opts", "-f", "raw", img],
      ["-w", "-U", "-f", "raw", "-c", "1", img],
      ["-f", "raw", `${dir}/missing.img`],
      [],
      ["a", "b"],
      ["-x", img],
      ["-c"],
      ["--bogus", img],
    ];
    for (const args of cases) {
      assertEquals([args, normalize(await ours(args))], [args, normalize(await peer(args))]);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
