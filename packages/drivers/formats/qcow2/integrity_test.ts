import { DriverRegistry, Graph, type Node } from "@blockgraph/core";
import { assert, assertBytesEqual, assertEquals, pattern } from "../../conformance/mod.ts";
import { memoryDriver } from "../../protocols/memory.ts";
import { formatQcow2, type Qcow2CreateParams } from "./create.ts";
import type { Qcow2Instance } from "./instance.ts";
import { qcow2Driver } from "./mod.ts";

const registry = new DriverRegistry([memoryDriver, qcow2Driver]);
const CS = 4096;

function params(over: Partial<Qcow2CreateParams> = {}): Qcow2CreateParams {
  return {
    size: 1 << 20,
    version: 3,
    clusterSize: CS,
    refcountBits: 16,
    lazyRefcounts: false,
    ...over,
  };
}

/** Formats a memory node with `p` and runs `fn` with a way to open qcow2 nodes over it. */
async function withImage(
  p: Qcow2CreateParams,
  fn: (mem: Node, open: (extra?: Record<string, unknown>) => Promise<Node>) => Promise<void>,
): Promise<void> {
  const graph = new Graph({ registry });
  const mem = await graph.open({ driver: "memory", "node-name": "mem" }, "t");
  await formatQcow2(mem, p);
  let n = 0;
  try {
    await fn(
      mem,
      (extra = {}) =>
        graph.open({ driver: "qcow2", "node-name": `q${++n}`, file: "mem", ...extra }, "t"),
    );
    await mem.unref("t");
  } finally {
    await graph.closeAll();
  }
}

function q(node: Node): Qcow2Instance {
  return node.instance as Qcow2Instance;
}

async function readAll(node: Node, offset: number, bytes: number): Promise<Uint8Array> {
  const buf = new Uint8Array(bytes);
  await node.read(offset, buf);
  return buf;
}

Deno.test("qcow2 check reports refcount table entries with reserved bits set, as QEMU does", () =>
  withImage(params(), async (mem, open) => {
    let node = await open();
    await node.write(0, pattern(2 * CS, 1));
    const at = q(node).image.header.refcountTableOffset;
    await node.unref("t");
    const entry = new Uint8Array(8);
    await mem.read(at, entry);
    entry[7]! |= 1;
    await mem.write(at, entry);
    node = await open({ "read-only": true });
    assertEquals(q(node).image.refcounts.table[0]! % CS, 0, "the offset leaves the reserved bits");
    const r = await q(node).check("none");
    assert(
      r.messages.includes("ERROR refcount table entry 0 has reserved bits set"),
      `messages: ${r.messages.join(" | ")}`,
    );
    assert(r.corruptions >= 1, "counted as a corruption");
    assertBytesEqual(await readAll(node, 0, 2 * CS), pattern(2 * CS, 1), "data");
    await node.unref("t");
  }));
