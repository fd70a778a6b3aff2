import { deepStrictEqual as assertEquals, ok as assert } from "node:assert";
import { Graph, type Node, ReqFlags } from "@blockgraph/core";
import { defaultRegistry, formatQcow2 } from "@blockgraph/drivers";
import { captureIo } from "../common/cli_io.ts";
import { type CopyPlan, runCopy } from "./convert_copy.ts";
import { Progress } from "./progress.ts";

const KIB = 1024;
const MIB = 1024 * KIB;

/** A plan copying `source` whole into `target` as data, `over` on top. */
function plan(source: Node, target: Node, over: Partial<CopyPlan> = {}): CopyPlan {
  return {
    sources: [source],
    target,
    sparse: 0,
    compressCluster: 0,
    zeroInit: false,
    targetHasBacking: false,
    workers: 4,
    outOfOrder: true,
    chunk: 64 * KIB,
    ...over,
  };
}

const quiet = () => new Progress(captureIo(), false, 1);

async function readAll(node: Node): Promise<Uint8Array> {
  const buf = new Uint8Array(node.getLength());
  await node.read(0, buf);
  return buf;
}

Deno.test("runCopy with a base copies only what the layers above it hold (img commit)", async () => {
  const graph = new Graph({ registry: defaultRegistry() });
  try {
    const base = await graph.open({ driver: "memory", "node-name": "base", size: 4 * MIB }, "t");
    await base.write(0, new Uint8Array(4 * MIB).fill(1));
    const mem = await graph.open({ driver: "memory", "node-name": "topfile" }, "t");
    await formatQcow2(mem, {
      size: 4 * MIB,
      version: 3,
      clusterSize: 64 * KIB,
      refcountBits: 16,
      lazyRefcounts: false,
    });
    const top = await graph.open({ driver: "qcow2", file: "topfile", backing: "base" }, "t");
    await top.write(64 * KIB, new Uint8Array(128 * KIB).fill(2));
    await top.pwriteZeroes(MIB, 64 * KIB, 0);
    await top.write(3 * MIB, new Uint8Array(64 * KIB).fill(3));
    const target = await graph.open({ driver: "memory", "node-name": "out", size: 4 * MIB }, "t");
    await target.write(0, new Uint8Array(4 * MIB).fill(0xee));
    await runCopy(plan(top, target, { above: base }), quiet());
    const want = new Uint8Array(4 * MIB).fill(0xee);
    want.fill(2, 64 * KIB, 192 * KIB);
    want.fill(0, MIB, MIB + 64 * KIB);
    want.fill(3, 3 * MIB, 3 * MIB + 64 * KIB);
    const got = await readAll(target);
    const diff = got.findIndex((b, i) => b !== want[i]);
    assertEquals(diff, -1, `first difference at ${diff}: ${got[diff]} for ${want[diff]}`);
    // Without a base the whole chain is copied, the base's bytes included.
    await runCopy(plan(top, target), quiet());
    want.fill(1, 0, 64 * KIB).fill(1, 192 * KIB, MIB).fill(1, MIB + 64 * KIB, 3 * MIB);
    want.fill(1, 3 * MIB + 64 * KIB);
    assertEquals((await readAll(target)).findIndex((b, i) => b !== want[i]), -1, "whole chain");
    for (const n of [top, mem, base, target]) await n.unref("t");
  } finally {
    await graph.closeAll();
  }
});

Deno.test("runCopy stays under its rate (-r)", async () => {
  const graph = new Graph({ registry: defaultRegistry() });
  try {
    const src = await graph.open({ driver: "memory", "node-name": "src", size: MIB }, "t");
    await src.write(0, new Uint8Array(MIB).fill(5), ReqFlags.FUA);
    const dst = await graph.open({ driver: "memory", "node-name": "dst", size: MIB }, "t");
    // 1 MiB at 1 MiB/s: the last of the 16 pieces is due a second after the start.
    const t0 = performance.now();
    await runCopy(plan(src, dst, { rate: MIB }), quiet());
    const ms = performance.now() - t0;
    assert(ms >= 900, `1 MiB at 1 MiB/s took ${ms.toFixed(0)} ms`);
    assertEquals((await readAll(dst)).every((b) => b === 5), true, "copied");
    for (const n of [src, dst]) await n.unref("t");
  } finally {
    await graph.closeAll();
  }
});

Deno.test("runCopy writes zeros only where the target does not read as zeros (convert -n)", async () => {
  const graph = new Graph({ registry: defaultRegistry() });
  try {
    const src = await graph.open({ driver: "memory", "node-name": "src", size: 4 * MIB }, "t");
    await src.write(0, new Uint8Array(64 * KIB).fill(5));
    const dst = await graph.open({ driver: "memory", "node-name": "dst", size: 4 * MIB }, "t");
    await dst.write(MIB, new Uint8Array(64 * KIB).fill(0xee));
    const zeroed: string[] = [];
    const real = dst.pwriteZeroes.bind(dst);
    dst.pwriteZeroes = (offset, bytes, flags) => {
      zeroed.push(`${offset / KIB}K+${bytes / KIB}K`);
      return real(offset, bytes, flags);
    };
    await runCopy(plan(src, dst, { sparse: 4096, skipTargetZeros: true }), quiet());
    const want = new Uint8Array(4 * MIB);
    want.fill(5, 0, 64 * KIB);
    const got = await readAll(dst);
    assertEquals(got.findIndex((b, i) => b !== want[i]), -1, "reads as the source");
    assertEquals(zeroed.join(" "), "1024K+64K", "zeros written only over the old data");
    for (const n of [src, dst]) await n.unref("t");
  } finally {
    await graph.closeAll();
  }
});
