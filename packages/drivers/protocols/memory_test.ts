import { BlockStatusFlags, DriverRegistry, Graph, ReqFlags } from "@blockgraph/core";
import {
  assert,
  assertBytesEqual,
  assertEquals,
  assertRejectsWith,
  CONFORMANCE_HOLDER,
  pattern,
  runConformance,
} from "../conformance/mod.ts";
import { MEMORY_CHUNK_SIZE, memoryDriver, type MemoryInstance } from "./memory.ts";

const registry = new DriverRegistry([memoryDriver]);
const SIZE = 4 * 1024 * 1024;

runConformance("memory", {
  registry,
  capabilities: {
    persistent: true,
    resize: true,
    growsOnWrite: true,
    discardGranularity: MEMORY_CHUNK_SIZE,
  },
  open: (graph, { readOnly }) =>
    graph.open(
      { driver: "memory", size: SIZE, discard: "unmap", "read-only": readOnly },
      CONFORMANCE_HOLDER,
    ),
});

async function withMemory(
  size: number,
  fn: (node: Awaited<ReturnType<Graph["open"]>>, inst: MemoryInstance) => Promise<void>,
): Promise<void> {
  const graph = new Graph({ registry });
  const node = await graph.open({ driver: "memory", size, discard: "unmap" }, "test");
  try {
    await fn(node, node.instance as MemoryInstance);
  } finally {
    await node.unref("test");
    await graph.closeAll();
  }
}

Deno.test("memory allocates only the chunks that are written", async () => {
  await withMemory(1 << 40, async (node, inst) => {
    assertEquals(inst.allocatedChunks, 0, "chunks of a fresh 1 TiB disk");
    await node.write(MEMORY_CHUNK_SIZE - 1, new Uint8Array([1, 2]));
    assertEquals(inst.allocatedChunks, 2, "chunks after a write across a chunk boundary");
    assertEquals(await inst.allocatedSize(), 2 * MEMORY_CHUNK_SIZE, "allocated size");
    await node.write(2 ** 39 + 3, new Uint8Array([9]));
    const buf = new Uint8Array(3);
    await node.read(2 ** 39 + 2, buf);
    assertBytesEqual(buf, new Uint8Array([0, 9, 0]), "read far into the disk");
  });
});

Deno.test("memory write-zeroes drops whole chunks and zero-fills partial ones", async () => {
  await withMemory(8 * MEMORY_CHUNK_SIZE, async (node, inst) => {
    await node.write(0, pattern(4 * MEMORY_CHUNK_SIZE, 1));
    assertEquals(inst.allocatedChunks, 4, "chunks after the write");
    await node.pwriteZeroes(MEMORY_CHUNK_SIZE / 2, 2 * MEMORY_CHUNK_SIZE, ReqFlags.MAY_UNMAP);
    assertEquals(inst.allocatedChunks, 3, "chunks after zeroing one whole and two halves");
    const buf = new Uint8Array(3 * MEMORY_CHUNK_SIZE);
    await node.read(0, buf);
    const expected = pattern(4 * MEMORY_CHUNK_SIZE, 1).subarray(0, buf.length);
    expected.fill(0, MEMORY_CHUNK_SIZE / 2, MEMORY_CHUNK_SIZE / 2 + 2 * MEMORY_CHUNK_SIZE);
    assertBytesEqual(buf, expected, "data after write-zeroes");
  });
});

Deno.test("memory discard drops whole chunks and keeps partial ones", async () => {
  await withMemory(8 * MEMORY_CHUNK_SIZE, async (node, inst) => {
    const data = pattern(3 * MEMORY_CHUNK_SIZE, 2);
    await node.write(0, data);
    await node.pdiscard(100, 2 * MEMORY_CHUNK_SIZE);
    assertEquals(inst.allocatedChunks, 2, "chunks after discarding one whole chunk");
    const buf = new Uint8Array(data.length);
    await node.read(0, buf);
    const expected = data.slice();
    expected.fill(0, MEMORY_CHUNK_SIZE, 2 * MEMORY_CHUNK_SIZE);
    assertBytesEqual(buf, expected, "data after discard");
  });
});

Deno.test("memory block status reports DATA for chunks and ZERO for holes", async () => {
  await withMemory(16 * MEMORY_CHUNK_SIZE, async (node) => {
    await node.write(2 * MEMORY_CHUNK_SIZE + 10, pattern(MEMORY_CHUNK_SIZE, 3));
    const hole = await node.blockStatus(0, 16 * MEMORY_CHUNK_SIZE);
    assert(hole.status & BlockStatusFlags.ZERO, "the start is a hole");
    assertEquals(hole.pnum, 2 * MEMORY_CHUNK_SIZE, "hole length");
    const data = await node.blockStatus(2 * MEMORY_CHUNK_SIZE + 5, 16 * MEMORY_CHUNK_SIZE - 1);
    assert(data.status & BlockStatusFlags.DATA, "the written chunks are data");
    assert(data.status & BlockStatusFlags.ALLOCATED, "data is allocated");
    assertEquals(data.pnum, 2 * MEMORY_CHUNK_SIZE - 5, "data run length");
    assertEquals(data.map, 2 * MEMORY_CHUNK_SIZE + 5, "data maps onto the node");
    const tail = await node.blockStatus(4 * MEMORY_CHUNK_SIZE, 12 * MEMORY_CHUNK_SIZE);
    assert(tail.status & BlockStatusFlags.ZERO, "the tail is a hole");
    assert(tail.status & BlockStatusFlags.EOF, "the tail hole reaches the end");
    assertEquals(tail.pnum, 12 * MEMORY_CHUNK_SIZE, "tail hole length");
  });
});

Deno.test("memory block status finds the next chunk after a long hole quickly", async () => {
  await withMemory(2 ** 45, async (node) => {
    await node.write(2 ** 44, new Uint8Array([1]));
    const st = await node.blockStatus(0, 2 ** 45);
    assert(st.status & BlockStatusFlags.ZERO, "hole before the chunk");
    assertEquals(st.pnum, 2 ** 44, "the hole ends at the chunk");
  });
});

Deno.test("memory truncate with preallocation allocates the grown chunks", async () => {
  await withMemory(MEMORY_CHUNK_SIZE, async (node, inst) => {
    await node.write(MEMORY_CHUNK_SIZE - 1, new Uint8Array([7]));
    await node.truncate(3 * MEMORY_CHUNK_SIZE + 1, true, "full");
    assertEquals(inst.allocatedChunks, 4, "chunks after growing with full preallocation");
    assertEquals(node.getLength(), 3 * MEMORY_CHUNK_SIZE + 1, "length");
    await assertRejectsWith(node.truncate(10, true, "full"), "ENOTSUP", "shrink with prealloc");
    await assertRejectsWith(
      node.truncate(8 * MEMORY_CHUNK_SIZE, true, "metadata"),
      "ENOTSUP",
      "metadata preallocation",
    );
    await node.truncate(10);
    assertEquals(inst.allocatedChunks, 1, "chunks after shrinking to 10 bytes");
    await node.truncate(MEMORY_CHUNK_SIZE);
    const last = new Uint8Array(1);
    await node.read(MEMORY_CHUNK_SIZE - 1, last);
    assertEquals(last[0], 0, "the byte cut off by the shrink after growing back");
  });
});

Deno.test("memory size option accepts QEMU size suffixes and defaults to 0", async () => {
  const graph = new Graph({ registry });
  const a = await graph.open({ driver: "memory", size: "64k" }, "test");
  const b = await graph.open({ driver: "memory" }, "test");
  assertEquals(a.getLength(), 65536, "size=64k");
  assertEquals(b.getLength(), 0, "default size");
  await a.unref("test");
  await b.unref("test");
  await graph.closeAll();
});
