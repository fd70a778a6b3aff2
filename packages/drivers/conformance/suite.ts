/**
 * Runs the conformance cases against a driver: one `Deno.test` per case, each on a fresh
 * graph that is closed (and must close cleanly) when the case ends.
 *
 * @module
 */

import { Graph } from "@blockgraph/core";
import { caseApplies, conformanceCases } from "./cases.ts";
import { DiskModel } from "./disk_model.ts";
import { CONFORMANCE_HOLDER, type ConformanceCase, type ConformanceTarget } from "./target.ts";

/**
 * Runs one case against `target`: opens a graph and a node, runs the case, then drops the
 * node and closes the graph. The case's error wins over an error from closing.
 */
export async function runCase(target: ConformanceTarget, c: ConformanceCase): Promise<void> {
  const graph = new Graph({ registry: target.registry });
  let failure: unknown = null;
  try {
    const node = await target.open(graph, { readOnly: c.readOnly === true });
    try {
      await c.run({ node, model: new DiskModel(node.getLength()), caps: target.capabilities });
    } finally {
      if (node.refcount > 0) await node.unref(CONFORMANCE_HOLDER);
    }
  } catch (e) {
    failure = e;
  }
  try {
    await graph.closeAll();
  } catch (e) {
    failure ??= e;
  }
  try {
    await target.cleanup?.();
  } catch (e) {
    failure ??= e;
  }
  if (failure !== null) throw failure;
}

/**
 * Registers the conformance suite for a driver: a `Deno.test` named
 * `conformance: <name>: <behaviour>` for every case that applies to the target's
 * capabilities.
 *
 * @example
 * ```ts ignore
 * import { DriverRegistry } from "@blockgraph/core";
 * import { memoryDriver } from "@blockgraph/drivers";
 * import { CONFORMANCE_HOLDER, runConformance } from "@blockgraph/drivers/conformance";
 * runConformance("memory", {
 *   registry: new DriverRegistry([memoryDriver]),
 *   capabilities: { persistent: true, resize: true, growsOnWrite: true },
 *   open: (graph, { readOnly }) =>
 *     graph.open({ driver: "memory", size: 4 << 20, discard: "unmap", "read-only": readOnly },
 *       CONFORMANCE_HOLDER),
 * });
 * ```
 */
export function runConformance(name: string, target: ConformanceTarget): void {
  for (const c of conformanceCases()) {
    if (!caseApplies(c, target.capabilities)) continue;
    Deno.test(`conformance: ${name}: ${c.name}`, () => runCase(target, c));
  }
}
