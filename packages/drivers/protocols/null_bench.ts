import { DriverRegistry, Graph, IoVector } from "@blockgraph/core";
import { nullDriver } from "./null.ts";

const graph = new Graph({ registry: new DriverRegistry([nullDriver]) });
const node = await graph.open({ driver: "null-co", size: "1G" }, "bench");
const buf = new Uint8Array(4096);
const qiov = IoVector.of(buf);

Deno.bench("null-co 4 KiB read through the node, depth 32", { group: "null-co" }, async () => {
  const batch: Promise<void>[] = [];
  for (let i = 0; i < 32; i++) batch.push(node.preadv(i * 4096, 4096, qiov, 0));
  await Promise.all(batch);
});

Deno.bench(
  "null-co 4 KiB read straight to the driver, depth 32",
  { group: "null-co" },
  async () => {
    const inst = node.instance!;
    const batch: Promise<void>[] = [];
    for (let i = 0; i < 32; i++) batch.push(inst.preadv(i * 4096, 4096, qiov, 0, 0));
    await Promise.all(batch);
  },
);
