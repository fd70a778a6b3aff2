import { DriverRegistry } from "@blockgraph/core";
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert";
import { memoryDriver } from "../../protocols/memory.ts";
import { Corruption } from "./corruption.ts";
import { formatQcow2 } from "./create.ts";
import { Incompat } from "./format.ts";
import { parseHeader } from "./header.ts";
import { qcow2Params, withGraph } from "./test_fixtures.ts";

const registry = new DriverRegistry([memoryDriver]);

Deno.test("Corruption marks a writable image corrupt on disk once, and reports a read-only one once", () =>
  withGraph(registry, async (graph) => {
    const file = await graph.open({ driver: "memory", "node-name": "m" }, "t");
    await formatQcow2(file, qcow2Params({ size: 1 << 20 }));
    const raw = new Uint8Array(4096);
    await file.read(0, raw);
    const header = parseHeader(raw);
    const events: Record<string, unknown>[] = [];
    const sink = { nodeName: "q", emit: (_: string, d: Record<string, unknown>) => events.push(d) };
    const ro = new Corruption(sink, header, file);
    ro.signal("bad L2 entry", false, 65536);
    ro.signal("bad again", false);
    assertEquals(events.map((e) => e.fatal), [false], "a read-only image reports once");
    assert(!ro.broken, "reading goes on");
    const rw = new Corruption(sink, header, file);
    const err = rw.signal("refcount block overlaps", true, 131072, 512);
    rw.signal("more", true);
    await rw.settle();
    assert(rw.broken, "I/O stops");
    assertEquals(String(err.message), "qcow2: refcount block overlaps");
    assertEquals(events.length, 2, "one fatal event");
    assertEquals(events[1], {
      device: "",
      "node-name": "q",
      msg: "refcount block overlaps",
      offset: 131072,
      size: 512,
      fatal: true,
    });
    await file.read(0, raw);
    const back = parseHeader(raw);
    assert((back.incompatible & BigInt(Incompat.CORRUPT)) !== 0n, "the corrupt bit is on disk");
    await file.unref("t");
  }));
