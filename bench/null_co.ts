/**
 * Pure layer overhead: 4 KiB reads from `null-co` through a Backend at a given depth, the
 * same workload `qemu-img bench --image-opts driver=null-co` runs.
 *
 * @module
 */

import { Graph, IoVector, Perm } from "@blockgraph/core";
import { defaultRegistry } from "@blockgraph/drivers";

/** Runs `count` reads of `size` bytes, `depth` in flight, stepping through the disk; returns seconds. */
export async function benchNullCo(count: number, depth: number, size = 4096): Promise<number> {
  const graph = new Graph({ registry: defaultRegistry() });
  const node = await graph.open({ driver: "null-co", size: 1 << 30 }, "bench");
  const blk = graph.createBackend({ perm: Perm.CONSISTENT_READ, shared: Perm.ALL });
  await blk.insertRoot(node);
  await node.unref("bench");
  const disk = 1 << 30;
  let issued = 0;
  let offset = 0;
  const start = performance.now();
  const lane = async (q: IoVector): Promise<void> => {
    while (issued < count) {
      issued++;
      const off = offset;
      offset = (offset + size) % disk;
      await blk.preadv(off, size, q, 0, 0);
    }
  };
  const lanes: Promise<void>[] = [];
  for (let i = 0; i < depth; i++) lanes.push(lane(IoVector.of(new Uint8Array(size))));
  await Promise.all(lanes);
  const seconds = (performance.now() - start) / 1000;
  await graph.closeAll();
  return seconds;
}
