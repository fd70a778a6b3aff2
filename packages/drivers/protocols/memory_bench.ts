import { DriverRegistry, Graph, IoVector } from "@blockgraph/core";
import { memoryDriver } from "./memory.ts";

const graph = new Graph({ registry: new DriverRegistry([memoryDriver]) });
const node = await graph.open({ driver: "memory", size: "64M" }, "bench");
const buf = new Uint8Array(4096).fill(1);
const qiov = IoVector.of(buf);
for (let o = 0; o < 64 << 20; o += 1 << 20) await node.write(o, new Uint8Array(1 << 20).fill(3));

Deno.bench("memory 4 KiB random read, depth 32", { group: "memory" }, async () => {
  const batch: Promise<void>[] = [];
  for (let i = 0; i < 32; i++) {
    batch.push(node.preadv(((i * 7919) % 16384) * 4096, 4096, qiov, 0));
  }
  await Promise.all(batch);
});

Deno.bench("memory 4 KiB random write, depth 32", { group: "memory" }, async () => {
  const batch: Promise<void>[] = [];
  for (let i = 0; i < 32; i++) {
    batch.push(node.pwritev(((i * 7919) % 16384) * 4096, 4096, qiov, 0));
  }
  await Promise.all(batch);
});

const big = IoVector.of(new Uint8Array(1 << 20));

Deno.bench("memory 1 MiB sequential read", { group: "memory-large" }, async () => {
  await node.preadv(5 << 20, 1 << 20, big, 0);
});
