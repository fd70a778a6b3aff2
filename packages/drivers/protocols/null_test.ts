import { BlockStatusFlags, DriverRegistry, Graph, IoVector, ReqFlags } from "@blockgraph/core";
import {
  assert,
  assertBytesEqual,
  assertEquals,
  assertRejectsWith,
  CONFORMANCE_HOLDER,
  runConformance,
} from "../conformance/mod.ts";
import { nullDriver, type NullInstance } from "./null.ts";

const registry = new DriverRegistry([nullDriver]);

runConformance("null-co", {
  registry,
  capabilities: { persistent: false, readsZeroes: true, resize: false, growsOnWrite: false },
  open: (graph, { readOnly }) =>
    graph.open(
      {
        driver: "null-co",
        size: 4 * 1024 * 1024,
        "read-zeroes": true,
        discard: "unmap",
        "read-only": readOnly,
      },
      CONFORMANCE_HOLDER,
    ),
});

async function withNull(
  options: Record<string, unknown>,
  fn: (node: Awaited<ReturnType<Graph["open"]>>) => Promise<void>,
): Promise<void> {
  const graph = new Graph({ registry });
  const node = await graph.open({ driver: "null-co", ...options }, "test");
  try {
    await fn(node);
  } finally {
    await node.unref("test");
    await graph.closeAll();
  }
}

Deno.test("null-co defaults to 1 GiB and leaves read buffers untouched", async () => {
  await withNull({}, async (node) => {
    assertEquals(node.getLength(), 1073741824, "default size");
    const buf = new Uint8Array(4096).fill(0x5a);
    await node.read(512, buf);
    assertBytesEqual(buf, new Uint8Array(4096).fill(0x5a), "buffer after a read");
    const st = await node.blockStatus(0, 65536);
    assertEquals(
      st.status &
        (BlockStatusFlags.DATA | BlockStatusFlags.ZERO | BlockStatusFlags.OFFSET_VALID |
          BlockStatusFlags.ALLOCATED),
      BlockStatusFlags.OFFSET_VALID,
      "without read-zeroes: neither data nor zeros, so not allocated (qemu-io map agrees)",
    );
  });
});

Deno.test("null-co with read-zeroes reports ZERO mapped onto itself", async () => {
  await withNull({ size: "1M", "read-zeroes": "on" }, async (node) => {
    const st = await node.blockStatus(4096, 1 << 20);
    assert(st.status & BlockStatusFlags.ZERO, "ZERO bit");
    assert(st.status & BlockStatusFlags.OFFSET_VALID, "OFFSET_VALID bit");
    assert(!(st.status & BlockStatusFlags.DATA), "no DATA bit");
    assertEquals(st.pnum, (1 << 20) - 4096, "pnum runs to the end");
    assertEquals(st.map, 4096, "map");
    assert(st.file === node, "file is the node itself");
  });
});

Deno.test("null-co without latency completes every request with one shared promise", async () => {
  await withNull({ "read-zeroes": true }, (node) => {
    const inst = node.instance as NullInstance;
    const buf = new Uint8Array(512).fill(1);
    const q = IoVector.of(buf);
    const a = inst.preadv(0, 512, q, 0);
    const b = inst.pwritev();
    const c = inst.flush();
    assert(a === b && b === c, "the same promise every time");
    assertBytesEqual(buf, new Uint8Array(512), "read-zeroes filled the buffer");
    return Promise.resolve();
  });
});

Deno.test("null-co latency-ns delays requests by about that long", async () => {
  await withNull({ "latency-ns": 20_000_000 }, async (node) => {
    const start = performance.now();
    await node.write(0, new Uint8Array(512), ReqFlags.FUA);
    const took = performance.now() - start;
    assert(took >= 15, `a 20 ms latency took ${took.toFixed(1)} ms`);
  });
});

Deno.test("null-co refuses a negative latency-ns", async () => {
  const graph = new Graph({ registry });
  await assertRejectsWith(
    graph.open({ driver: "null-co", "latency-ns": -1 }, "t"),
    "EINVAL",
    "open",
  );
  await graph.closeAll();
});

Deno.test("null-co accepts only the filename null-co://", () => {
  assertEquals(JSON.stringify(nullDriver.parseFilename!("null-co://")), "{}", "options");
  let message = "";
  try {
    nullDriver.parseFilename!("null-co://x");
  } catch (e) {
    message = (e as Error).message;
  }
  assertEquals(message, "The only allowed filename for this driver is 'null-co://'", "message");
});

Deno.test("null-co cannot be resized and takes no space", async () => {
  await withNull({ size: 65536 }, async (node) => {
    await assertRejectsWith(node.truncate(131072), "ENOTSUP", "truncate");
    assertEquals(await (node.instance as NullInstance).allocatedSize(), 0, "allocated size");
  });
});
