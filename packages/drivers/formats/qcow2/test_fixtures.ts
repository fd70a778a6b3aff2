/**
 * Fixtures the qcow2 unit tests share: create parameters, a graph that is closed after the
 * test (the test's own failure winning), an image formatted on a memory node with a way to
 * open qcow2 nodes over it, and the reads and checks the tests make. Not part of the
 * published package.
 *
 * @module
 */

import { DriverRegistry, type ErrorCode, Graph, type Node } from "@blockgraph/core";
import { assert, assertEquals, assertRejectsWith } from "../../conformance/mod.ts";
import { memoryDriver } from "../../protocols/memory.ts";
import { formatQcow2, type Qcow2CreateParams } from "./create.ts";
import type { Qcow2Instance } from "./instance.ts";
import { qcow2Driver } from "./mod.ts";

/** A registry with the memory protocol and qcow2. */
export const registry: DriverRegistry = new DriverRegistry([memoryDriver, qcow2Driver]);

/** Version 3, 1 MiB, 64 KiB clusters, 16-bit refcounts, no lazy refcounts; `over` on top. */
export function qcow2Params(over: Partial<Qcow2CreateParams> = {}): Qcow2CreateParams {
  return {
    size: 1 << 20,
    version: 3,
    clusterSize: 65536,
    refcountBits: 16,
    lazyRefcounts: false,
    ...over,
  };
}

/**
 * Runs `fn` on a new graph over `reg`, then closes every node left in it. The test's own
 * failure wins over nodes it left open because of it.
 */
export async function withGraph(
  reg: DriverRegistry,
  fn: (graph: Graph) => Promise<void>,
): Promise<void> {
  const graph = new Graph({ registry: reg });
  let failure: unknown = null;
  try {
    await fn(graph);
  } catch (e) {
    failure = e;
  }
  try {
    await graph.closeAll();
  } catch (e) {
    failure ??= e;
  }
  if (failure !== null) throw failure;
}

/** What {@link withImage} hands its test. */
export interface ImageFixture {
  /** The graph the nodes live in. */
  graph: Graph;
  /** The memory node `mem` that holds the image file. */
  mem: Node;
  /** Opens a new qcow2 node (`q1`, `q2`, ...) over `mem`, held by `t`, with `extra` options. */
  open(extra?: Record<string, unknown>): Promise<Node>;
}

/** Formats a memory node with `p` and runs `fn` with a way to open qcow2 nodes over it. */
export function withImage(
  p: Qcow2CreateParams,
  fn: (f: ImageFixture) => Promise<void>,
): Promise<void> {
  return withGraph(registry, async (graph) => {
    const mem = await graph.open({ driver: "memory", "node-name": "mem" }, "t");
    await formatQcow2(mem, p);
    let n = 0;
    const open = (extra: Record<string, unknown> = {}) =>
      graph.open({ driver: "qcow2", "node-name": `q${++n}`, file: "mem", ...extra }, "t");
    await fn({ graph, mem, open });
    await mem.unref("t");
  });
}

/** The qcow2 instance of `node`. */
export function q(node: Node): Qcow2Instance {
  return node.instance as Qcow2Instance;
}

/** Reads `bytes` bytes of `node` at `offset`. */
export async function readAll(node: Node, offset: number, bytes: number): Promise<Uint8Array> {
  const buf = new Uint8Array(bytes);
  await node.read(offset, buf);
  return buf;
}

/** Fails unless `check` finds nothing wrong with the image of `node`: no message, no count. */
export async function expectClean(node: Node, label: string): Promise<void> {
  const r = await q(node).check("none");
  assertEquals(JSON.stringify(r.messages), "[]", `${label}: check messages`);
  assertEquals([r.corruptions, r.leaks, r["check-errors"]].join(), "0,0,0", `${label}: counts`);
}

/** Fails unless `promise` rejects with `code` and a message containing `text`. */
export async function rejects(
  promise: Promise<unknown>,
  code: ErrorCode,
  text: string,
): Promise<void> {
  const e = await assertRejectsWith(promise, code, text);
  assert(e.message.includes(text), `message '${e.message}' lacks '${text}'`);
}
