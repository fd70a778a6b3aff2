import { BlockStatusFlags, ChildRole, DriverRegistry, Graph } from "@blockgraph/core";
import {
  assert,
  assertBytesEqual,
  assertEquals,
  assertRejectsWith,
  CONFORMANCE_HOLDER,
  pattern,
  runConformance,
} from "../conformance/mod.ts";
import { formatOverFile } from "./file_target_testing.ts";
import { fileDriver } from "../protocols/file.ts";
import { MEMORY_CHUNK_SIZE, memoryDriver } from "../protocols/memory.ts";
import { nullDriver } from "../protocols/null.ts";
import { rawDriver, type RawInstance } from "./raw.ts";

const registry = new DriverRegistry([memoryDriver, fileDriver, nullDriver, rawDriver]);
const SIZE = 4 * 1024 * 1024;

runConformance("raw over memory", {
  registry,
  capabilities: {
    persistent: true,
    resize: true,
    growsOnWrite: true,
    discardGranularity: MEMORY_CHUNK_SIZE,
  },
  open: (graph, { readOnly }) =>
    graph.open(
      {
        driver: "raw",
        discard: "unmap",
        "read-only": readOnly,
        file: { driver: "memory", size: SIZE },
      },
      CONFORMANCE_HOLDER,
    ),
});

runConformance("raw with offset and size over memory", {
  registry,
  capabilities: { persistent: true, resize: false, growsOnWrite: false },
  open: (graph, { readOnly }) =>
    graph.open(
      {
        driver: "raw",
        offset: 12345,
        size: SIZE,
        discard: "unmap",
        "read-only": readOnly,
        file: { driver: "memory", size: SIZE + 12345 + 4096 },
      },
      CONFORMANCE_HOLDER,
    ),
});

runConformance(
  "raw over file",
  formatOverFile(rawDriver, registry, { persistent: true, resize: true, growsOnWrite: true }, {
    size: SIZE,
    filename: "disk.img",
  }),
);

type OpenNode = Awaited<ReturnType<Graph["open"]>>;

async function withRaw(
  options: Record<string, unknown>,
  fn: (node: OpenNode, file: OpenNode) => Promise<void>,
): Promise<void> {
  const graph = new Graph({ registry });
  const node = await graph.open({ driver: "raw", ...options }, "test");
  try {
    await fn(node, node.file!.node!);
  } finally {
    await node.unref("test");
    await graph.closeAll();
  }
}

Deno.test("raw without a window is a filter of its file", async () => {
  await withRaw({ file: { driver: "memory", size: 65536 } }, async (node, file) => {
    assertEquals(node.file!.role, ChildRole.FILTERED | ChildRole.PRIMARY, "child role");
    assert(node.filteredChild === node.file, "the file is the filtered child");
    await file.truncate(131072);
    assertEquals(node.getLength(), 131072, "length follows the file");
  });
});

Deno.test("raw with a window maps requests into it and leaves the rest alone", async () => {
  await withRaw(
    { offset: 1000, size: 4096, file: { driver: "memory", size: 8192 } },
    async (node, file) => {
      assertEquals(node.file!.role, ChildRole.DATA | ChildRole.PRIMARY, "child role");
      assertEquals(node.getLength(), 4096, "length is the window size");
      await file.write(0, pattern(8192, 1));
      await node.write(1, pattern(4095, 2));
      const all = new Uint8Array(8192);
      await file.read(0, all);
      const expected = pattern(8192, 1);
      expected.set(pattern(4095, 2), 1001);
      assertBytesEqual(all, expected, "file content");
      await node.pwriteZeroes(0, 4096);
      await file.read(0, all);
      expected.fill(0, 1000, 5096);
      assertBytesEqual(all, expected, "file content after write-zeroes");
    },
  );
});

Deno.test("raw with a fixed size refuses requests beyond it", async () => {
  await withRaw({ size: 4096, file: { driver: "memory", size: 8192 } }, async (node) => {
    const inst = node.instance as RawInstance;
    await assertRejectsWith(node.write(4000, new Uint8Array(200)), "ENOSPC", "write across");
    await assertRejectsWith(node.pwriteZeroes(4096, 512), "ENOSPC", "write-zeroes past");
    await assertRejectsWith(inst.preadv(4000, 200, undefined as never, 0, 0), "EINVAL", "read");
    await assertRejectsWith(node.truncate(8192), "ENOTSUP", "truncate");
    const buf = new Uint8Array(200).fill(1);
    await node.read(4000, buf);
    assertBytesEqual(buf.subarray(96), new Uint8Array(104), "node reads past the end as zeros");
  });
});

Deno.test("raw refuses windows that do not fit the file, in QEMU's words", async () => {
  const graph = new Graph({ registry });
  const file = { driver: "memory", size: 4096 };
  const e1 = await assertRejectsWith(
    graph.open({ driver: "raw", offset: 5000, file }, "t"),
    "EINVAL",
    "offset past the end",
  );
  assertEquals(
    e1.message,
    "Offset (5000) cannot be greater than size of the containing file (4096)",
    "message",
  );
  await assertRejectsWith(
    graph.open({ driver: "raw", offset: 1024, size: 3584, file }, "t"),
    "EINVAL",
    "offset + size past the end",
  );
  const e3 = await assertRejectsWith(
    graph.open({ driver: "raw", size: 1000, file }, "t"),
    "EINVAL",
    "size not a multiple of 512",
  );
  assertEquals(e3.message, "Specified size is not multiple of 512", "message");
  await assertRejectsWith(graph.open({ driver: "raw" }, "t"), "EINVAL", "no file child");
  assertEquals(graph.nodes().length, 0, "failed opens leave no node behind");
  await graph.closeAll();
});

Deno.test("raw block status resolves through the file at offset + o", async () => {
  await withRaw(
    { offset: MEMORY_CHUNK_SIZE, file: { driver: "memory", size: 4 * MEMORY_CHUNK_SIZE } },
    async (node, file) => {
      await node.write(MEMORY_CHUNK_SIZE + 7, new Uint8Array([1]));
      const hole = await node.blockStatus(10, 3 * MEMORY_CHUNK_SIZE);
      assert(hole.status & BlockStatusFlags.ZERO, "the file's hole shows as ZERO");
      assertEquals(hole.pnum, MEMORY_CHUNK_SIZE - 10, "hole length");
      assertEquals(hole.map, MEMORY_CHUNK_SIZE + 10, "map is offset + o");
      assert(hole.file === file, "file is the memory node");
      const data = await node.blockStatus(MEMORY_CHUNK_SIZE, 2 * MEMORY_CHUNK_SIZE);
      assert(data.status & BlockStatusFlags.DATA, "the written chunk shows as DATA");
      assertEquals(data.pnum, MEMORY_CHUNK_SIZE, "data length");
    },
  );
});

Deno.test("raw with only an offset resizes its file to offset + size", async () => {
  await withRaw({ offset: 512, file: { driver: "memory", size: 4096 } }, async (node, file) => {
    await node.truncate(10000);
    assertEquals(node.getLength(), 10000, "raw length");
    assertEquals(file.getLength(), 10512, "file length");
  });
});

Deno.test("raw reopen changes the window after checking it", async () => {
  await withRaw({ file: { driver: "memory", size: 8192 } }, async (node) => {
    const inst = node.instance as RawInstance;
    await assertRejectsWith(inst.reopenPrepare({ offset: 9000 }), "EINVAL", "bad window");
    const h = await inst.reopenPrepare({ offset: 512, size: 1024 });
    assertEquals(node.getLength(), 8192, "unchanged before commit");
    h.commit();
    assertEquals(inst.offset, 512, "offset after commit");
    assertEquals(node.getLength(), 1024, "length after commit");
  });
});

Deno.test("raw probes with the lowest positive score", () => {
  assertEquals(rawDriver.probe!(new Uint8Array(512), "x.img"), 1, "score");
});

Deno.test("raw create goes through the protocol driver the filename names", async () => {
  const dir = await Deno.makeTempDir({ prefix: "blockgraph-raw-" });
  try {
    await rawDriver.create!({ filename: `${dir}/c.img`, size: 65536 }, registry);
    assertEquals((await Deno.stat(`${dir}/c.img`)).size, 65536, "created file size");
    await rawDriver.create!(
      { filename: `${dir}/f.img`, size: 65536, preallocation: "full" },
      registry,
    );
    assertEquals((await Deno.stat(`${dir}/f.img`)).size, 65536, "preallocated file size");
    await assertRejectsWith(
      rawDriver.create!({ filename: "null-co://", size: 512 }, registry),
      "ENOTSUP",
      "protocol without create",
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
