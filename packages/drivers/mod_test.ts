import { Graph } from "@blockgraph/core";
import { assertBytesEqual, assertEquals } from "./conformance/mod.ts";
import { defaultRegistry } from "./mod.ts";

Deno.test("defaultRegistry holds every driver of the package", () => {
  const names = defaultRegistry().all().map((d) => d.name).sort();
  assertEquals(names.join(","), "file,memory,nbd,null-co,qcow2,raw", "driver names");
});

Deno.test("defaultRegistry opens raw over memory as in the examples", async () => {
  const graph = new Graph({ registry: defaultRegistry() });
  const node = await graph.open(
    { driver: "raw", "node-name": "disk0", file: { driver: "memory", size: 1048576 } },
    "test",
  );
  assertEquals(node.refcount, 1, "refcount");
  await node.write(513, new Uint8Array([4, 5, 6]));
  const buf = new Uint8Array(3);
  await node.read(513, buf);
  assertBytesEqual(buf, new Uint8Array([4, 5, 6]), "read back");
  await node.unref("test");
  await graph.closeAll();
  assertEquals(graph.nodes().length, 0, "nodes left");
});

Deno.test("defaultRegistry maps null-co:// and paths to their protocols", () => {
  const r = defaultRegistry();
  assertEquals(r.protocolFor("null-co://").name, "null-co", "null-co://");
  assertEquals(r.protocolFor("/tmp/x.img").name, "file", "a path");
  assertEquals(r.protocolFor("file:/tmp/x.img").name, "file", "file: prefix");
});
