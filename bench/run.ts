/**
 * `deno task bench`: ours and the peer side by side in one run, alternating, several rounds;
 * prints medians and the ratio ours/peer (higher is better for us).
 *
 * @module
 */

import { ensurePeers } from "../tests/peers.ts";
import { benchNullCo } from "./null_co.ts";

const ROUNDS = Number(Deno.env.get("BENCH_ROUNDS") ?? 5);

async function qemuImgBench(args: string[]): Promise<number> {
  const out = await new Deno.Command("qemu-img", { args: ["bench", ...args], stderr: "piped" })
    .output();
  const text = new TextDecoder().decode(out.stdout);
  const m = /Run completed in ([\d.]+) seconds/.exec(text);
  if (!out.success || !m) {
    throw new Error(`qemu-img bench failed: ${new TextDecoder().decode(out.stderr)}`);
  }
  return Number(m[1]);
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

interface Case {
  name: string;
  count: number;
  ours: () => Promise<number>;
  peer: () => Promise<number>;
}

const cases: Case[] = [1, 32].map((depth) => {
  const count = depth === 1 ? 200_000 : 1_000_000;
  return {
    name: `null-co 4k read depth ${depth} vs qemu-img bench`,
    count,
    ours: () => benchNullCo(count, depth),
    peer: () =>
      qemuImgBench([
        "--image-opts",
        "driver=null-co,size=1G",
        "-c",
        String(count),
        "-d",
        String(depth),
        "-s",
        "4096",
      ]),
  };
});

await ensurePeers(["qemu-img"]);
console.log(`rounds: ${ROUNDS} (medians; IOPS = requests / wall time)`);
for (const c of cases) {
  const ours: number[] = [];
  const peer: number[] = [];
  await c.ours(); // warm-up: JIT and page faults
  for (let r = 0; r < ROUNDS; r++) {
    ours.push(c.count / await c.ours());
    peer.push(c.count / await c.peer());
  }
  const o = median(ours);
  const p = median(peer);
  console.log(
    `${c.name}: ours ${Math.round(o).toLocaleString("en")} IOPS, peer ${
      Math.round(p).toLocaleString("en")
    } IOPS, ratio ${(o / p).toFixed(2)}x`,
  );
}
