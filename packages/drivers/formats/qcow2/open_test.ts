import { DriverRegistry, type Node } from "@blockgraph/core";
import { assertEquals } from "../../conformance/mod.ts";
import { memoryDriver } from "../../protocols/memory.ts";
import { nullDriver } from "../../protocols/null.ts";
import { rawDriver } from "../raw.ts";
import { formatQcow2 } from "./create.ts";
import { qcow2Driver } from "./mod.ts";
import { qcow2Params, readAll, rejects, withGraph } from "./test_fixtures.ts";

const reg = new DriverRegistry([memoryDriver, nullDriver, rawDriver, qcow2Driver]);

const BASE = 'json:{"driver": "raw", "file": {"driver": "null-co", "size": 65536, ' +
  '"read-zeroes": true}}';

/** Opens a qcow2 node over a memory image whose header names `backingFile` as `fmt`. */
async function overlay(
  graph: Parameters<Parameters<typeof withGraph>[1]>[0],
  backingFile: string,
  fmt: string,
): Promise<Node> {
  const mem = await graph.open({ driver: "memory", "node-name": "mem" }, "t");
  await formatQcow2(mem, qcow2Params({ backingFile, backingFormat: fmt }));
  try {
    return await graph.open({ driver: "qcow2", "node-name": "top", file: "mem" }, "t");
  } finally {
    await mem.unref("t");
  }
}

Deno.test("qcow2 opens a json: backing file name from its header by the options it holds", () =>
  withGraph(reg, async (graph) => {
    const top = await overlay(graph, BASE, "raw");
    const backing = top.backing!.node!;
    assertEquals(backing.driver.name, "raw", "backing driver");
    assertEquals(backing.file!.node!.driver.name, "null-co", "backing file driver");
    assertEquals(backing.file!.node!.getLength(), 65536, "backing size from the JSON");
    assertEquals(backing.flags.readOnly, true, "backing read-only");
    // The backing file is the image's own: the overlay keeps its file's name.
    assertEquals(top.filename, "memory://", "overlay filename");
    assertEquals(
      backing.filename,
      'json:{"driver": "raw", "file": {"read-zeroes": true, "driver": "null-co", "size": 65536}}',
      "backing filename",
    );
    assertEquals((await readAll(top, 0, 4)).join(), "0,0,0,0", "reads through the backing");
    await top.unref("t");
  }));

Deno.test("qcow2's header backing format wins over the driver a json: name gives", () =>
  withGraph(reg, async (graph) => {
    await rejects(overlay(graph, BASE, "qcow2"), "EINVAL", "Could not open backing file: ");
  }));

Deno.test("qcow2 refuses a header json: backing name that does not parse, in QEMU's words", () =>
  withGraph(reg, async (graph) => {
    await rejects(
      overlay(graph, 'json:{"driver": "raw"', "raw"),
      "EINVAL",
      "Could not open backing file: Could not parse the JSON options: JSON parse error, " +
        "premature EOI",
    );
  }));
