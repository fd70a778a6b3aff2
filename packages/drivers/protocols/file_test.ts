import fs from "node:fs";
import {
  BlockStatusFlags,
  DriverRegistry,
  Graph,
  IoVector,
  type Node,
  ReqFlags,
} from "@blockgraph/core";
import {
  assert,
  assertBytesEqual,
  assertEquals,
  assertRejectsWith,
  CONFORMANCE_HOLDER,
  type ConformanceTarget,
  pattern,
  runConformance,
} from "../conformance/mod.ts";
import { fileDriver, type FileInstance, stripFilePrefix } from "./file.ts";
import { dirtyAfter, dirtyPages, writebackObservable } from "../io/engine_testing.ts";

const registry = new DriverRegistry([fileDriver]);
const SIZE = 4 * 1024 * 1024;

/** Temporary directories made by the conformance target, removed after each case. */
const tempDirs: string[] = [];

function conformanceTarget(extra: Record<string, unknown>): ConformanceTarget {
  // With O_DIRECT a write past the end is read-modify-written in whole blocks, so the file
  // grows to the block boundary (as QEMU's file-posix does), not to the byte.
  const direct = (extra.cache as { direct?: boolean } | undefined)?.direct === true;
  return {
    registry,
    capabilities: { persistent: true, resize: true, growsOnWrite: !direct },
    async open(graph, { readOnly }) {
      const dir = await Deno.makeTempDir({ prefix: "blockgraph-file-" });
      tempDirs.push(dir);
      await fileDriver.create!({ filename: `${dir}/disk.img`, size: SIZE }, registry);
      return graph.open(
        {
          driver: "file",
          filename: `${dir}/disk.img`,
          discard: "unmap",
          "read-only": readOnly,
          ...extra,
        },
        CONFORMANCE_HOLDER,
      );
    },
    async cleanup() {
      for (const dir of tempDirs.splice(0)) await Deno.remove(dir, { recursive: true });
    },
  };
}

runConformance("file", conformanceTarget({}));
runConformance("file aio=io_uring", conformanceTarget({ aio: "io_uring" }));
runConformance("file aio=native", conformanceTarget({ aio: "native" }));
runConformance("file aio=threads", conformanceTarget({ aio: "threads" }));
runConformance(
  "file aio=native cache.direct=on",
  conformanceTarget({ aio: "native", cache: { direct: true } }),
);
runConformance(
  "file aio=io_uring cache.direct=on",
  conformanceTarget({ aio: "io_uring", cache: { direct: true } }),
);
runConformance("file write-behind=4096", conformanceTarget({ "write-behind": 4096 }));
runConformance(
  "file aio=threads cache.direct=on",
  conformanceTarget({ aio: "threads", cache: { direct: true } }),
);

async function withTempDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "blockgraph-file-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

async function openFile(
  graph: Graph,
  path: string,
  extra: Record<string, unknown> = {},
): Promise<Awaited<ReturnType<Graph["open"]>>> {
  return await graph.open({ driver: "file", filename: path, ...extra }, "test");
}

Deno.test("file open of a missing file fails with ENOENT in QEMU's words", async () => {
  await withTempDir(async (dir) => {
    const graph = new Graph({ registry });
    const e = await assertRejectsWith(openFile(graph, `${dir}/nope.img`), "ENOENT", "open");
    assertEquals(
      e.message,
      `Could not open '${dir}/nope.img': No such file or directory`,
      "message",
    );
    await graph.closeAll();
  });
});

Deno.test("file refuses a directory", async () => {
  await withTempDir(async (dir) => {
    const graph = new Graph({ registry });
    await assertRejectsWith(openFile(graph, dir, { "read-only": true }), "EINVAL", "open dir");
    await graph.closeAll();
  });
});

Deno.test("file cache.direct=on opens with O_DIRECT and declares its alignment", async () => {
  await withTempDir(async (dir) => {
    await fileDriver.create!({ filename: `${dir}/d.img`, size: 65536 }, registry);
    const graph = new Graph({ registry });
    for (const aio of ["io_uring", "native", "threads"]) {
      const node = await openFile(graph, `${dir}/d.img`, { aio, cache: { direct: true } });
      const inst = node.instance as FileInstance;
      assert(inst.direct, "direct");
      assertEquals(inst.aio, aio, "engine");
      assert([512, 4096].includes(node.limits.requestAlignment), "block-size alignment");
      assertEquals(node.limits.memAlignment, 4096, "memory alignment");
      const fdInfo = [...Deno.readDirSync("/proc/self/fd")].map((e) => {
        try {
          return Deno.readLinkSync(`/proc/self/fd/${e.name}`) === `${dir}/d.img`
            ? Deno.readTextFileSync(`/proc/self/fdinfo/${e.name}`)
            : "";
        } catch {
          return "";
        }
      }).find((t) => t !== "")!;
      const flags = parseInt(/flags:\s+([0-7]+)/.exec(fdInfo)![1]!, 8);
      assert((flags & 0o40000) !== 0, `O_DIRECT in the descriptor's flags (${flags.toString(8)})`);
      // An odd request through the whole stack: the request layer aligns, the engine bounces.
      await node.write(1001, pattern(5000, 9));
      const back = new Uint8Array(5000);
      await node.read(1001, back);
      assertBytesEqual(back, pattern(5000, 9), `${aio}: data`);
      await node.unref("test");
    }
    await graph.closeAll();
  });
});

Deno.test("file accepts every aio engine and the locking modes, and shows the engine", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/d.img`;
    await fileDriver.create!({ filename: path, size: 4096 }, registry);
    const graph = new Graph({ registry });
    const node = await openFile(graph, path, { aio: "threads", locking: "off" });
    const inst = node.instance as FileInstance;
    assertEquals(inst.aio, "threads", "aio");
    assertEquals(inst.locking, "off", "locking");
    await node.unref("test");
    const dflt = await openFile(graph, path);
    assertEquals((dflt.instance as FileInstance).locking, "auto", "default locking");
    assertEquals((dflt.instance as FileInstance).aio, "io_uring", "auto picks io_uring here");
    await dflt.unref("test");
    const uring = await openFile(graph, path, { aio: "io_uring" });
    assertEquals((uring.instance as FileInstance).aio, "io_uring", "aio=io_uring");
    await uring.unref("test");
    await assertRejectsWith(openFile(graph, path, { aio: "posix" }), "EINVAL", "aio=posix");
    await graph.closeAll();
  });
});

Deno.test("file opens read-only nodes without write access to the file", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/ro.img`;
    await Deno.writeFile(path, pattern(1000, 1));
    await Deno.chmod(path, 0o444);
    const graph = new Graph({ registry });
    const node = await openFile(graph, path, { "read-only": true });
    assert((node.instance as FileInstance).readOnly, "opened read-only");
    const buf = new Uint8Array(1000);
    await node.read(0, buf);
    assertBytesEqual(buf, pattern(1000, 1), "content");
    await node.unref("test");
    if (Deno.uid() !== 0) {
      // Root may write anything, so only an unprivileged user sees the refusal.
      await assertRejectsWith(openFile(graph, path), "EACCES", "read-write open");
    }
    await graph.closeAll();
  });
});

Deno.test("file writes reach the host file and open by a file: filename", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/w.img`;
    await fileDriver.create!({ filename: `file:${path}`, size: 8192 }, registry);
    const graph = new Graph({ registry });
    const node = await graph.open({ filename: `file:${path}` }, "test");
    assertEquals(node.driver.name, "file", "driver chosen by the filename");
    assertEquals(node.filename, path, "the prefix is stripped");
    await node.write(4097, pattern(3000, 2));
    await node.flush();
    const onDisk = await Deno.readFile(path);
    assertEquals(onDisk.length, 8192, "file size");
    assertBytesEqual(onDisk.subarray(4097, 7097), pattern(3000, 2), "bytes in the file");
    await node.unref("test");
    await graph.closeAll();
  });
});

Deno.test("file driver fills a read across the end of the file with zeros", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/s.img`;
    await Deno.writeFile(path, pattern(100, 3));
    const graph = new Graph({ registry });
    const node = await openFile(graph, path);
    const buf = new Uint8Array(300).fill(0xff);
    // Straight to the driver: the request layer would stop at the end on its own.
    await (node.instance as FileInstance).preadv(50, 300, IoVector.of(buf), 0);
    assertBytesEqual(buf.subarray(0, 50), pattern(100, 3).subarray(50), "data before the end");
    assertBytesEqual(buf.subarray(50), new Uint8Array(250), "zeros after the end");
    await node.unref("test");
    await graph.closeAll();
  });
});

Deno.test("file length counts whole 512-byte sectors, as QEMU's, the tail reading zeros", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/odd.img`;
    await Deno.writeFile(path, pattern(1000, 5));
    const graph = new Graph({ registry });
    const node = await openFile(graph, path);
    // qemu-img info says 1024 for a 1000-byte file.
    assertEquals(node.getLength(), 1024, "length of a 1000-byte file");
    const buf = new Uint8Array(64).fill(0xff);
    await node.preadv(960, 64, IoVector.of(buf), 0);
    assertBytesEqual(buf.subarray(0, 40), pattern(1000, 5).subarray(960), "data before the end");
    assertBytesEqual(buf.subarray(40), new Uint8Array(24), "the rest of the sector reads zeros");
    assertEquals((await Deno.stat(path)).size, 1000, "reading changed nothing");
    await node.unref("test");
    await graph.closeAll();
  });
});

Deno.test("file create truncates an existing file and preallocates on request", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/c.img`;
    await Deno.writeFile(path, pattern(5000, 4));
    await fileDriver.create!({ filename: path, size: 1 << 20 }, registry);
    const sparse = await Deno.readFile(path);
    assertEquals(sparse.length, 1 << 20, "size after create");
    assertBytesEqual(sparse.subarray(0, 5000), new Uint8Array(5000), "old data is gone");
    await fileDriver.create!({ filename: path, size: 1 << 20, preallocation: "full" }, registry);
    const graph = new Graph({ registry });
    const node = await openFile(graph, path);
    const inst = node.instance as FileInstance;
    assert(await inst.allocatedSize() >= 1 << 20, "full preallocation allocates the file");
    await node.truncate(3 << 20, true, "falloc");
    assertEquals(node.getLength(), 3 << 20, "length after a falloc grow");
    assert(await inst.allocatedSize() >= 3 << 20, "falloc allocates the grown part");
    await assertRejectsWith(node.truncate(1 << 20, true, "full"), "ENOTSUP", "shrink + full");
    await assertRejectsWith(
      node.truncate(4 << 20, true, "metadata"),
      "ENOTSUP",
      "metadata preallocation",
    );
    await node.unref("test");
    await graph.closeAll();
  });
});

Deno.test("file create fails with the errno when the directory is missing", async () => {
  await withTempDir(async (dir) => {
    const e = await assertRejectsWith(
      fileDriver.create!({ filename: `${dir}/no/such/x.img`, size: 512 }, registry),
      "ENOENT",
      "create",
    );
    assertEquals(
      e.message,
      `Could not create '${dir}/no/such/x.img': No such file or directory`,
      "message",
    );
  });
});

Deno.test("stripFilePrefix removes only a leading file:", () => {
  assertEquals(stripFilePrefix("file:/a/b"), "/a/b", "prefixed");
  assertEquals(stripFilePrefix("/a/file:b"), "/a/file:b", "not prefixed");
  assertEquals(fileDriver.parseFilename!("file:x.img").filename, "x.img", "parseFilename");
});

Deno.test("file: reopening a read-only tree read-write reopens the inherited file descriptor", async () => {
  const dir = await Deno.makeTempDir({ prefix: "blockgraph-file-" });
  try {
    const path = `${dir}/disk.img`;
    await Deno.writeFile(path, new Uint8Array(65536));
    const { rawDriver } = await import("../formats/raw.ts");
    const { Perm } = await import("@blockgraph/core");
    const graph = new Graph({ registry: new DriverRegistry([fileDriver, rawDriver]) });
    const top = await graph.open(
      {
        driver: "raw",
        "node-name": "top",
        "read-only": true,
        file: { driver: "file", "node-name": "f", filename: path },
      },
      "t",
    );
    const file = graph.findNode("f")!;
    assert(file.flags.readOnly && (file.instance as FileInstance).readOnly, "opened read-only");
    await graph.reopen(top, { "read-only": false, file: "f" });
    assert(!top.flags.readOnly && !file.flags.readOnly, "the inherited read-only followed");
    assert(!(file.instance as FileInstance).readOnly, "the descriptor was reopened read-write");
    const blk = graph.createBackend({ perm: Perm.CONSISTENT_READ | Perm.WRITE, shared: Perm.ALL });
    await blk.insertRoot(top);
    await blk.write(4096, new Uint8Array(512).fill(0x5a));
    await blk.flush();
    assertEquals((await Deno.readFile(path))[4096], 0x5a);
    // Going read-only again is refused while a writer holds the node, and changes nothing.
    await assertRejectsWith(
      graph.reopen(top, { "read-only": true, file: "f" }),
      "EPERM",
      "read-only",
    );
    assert(!(file.instance as FileInstance).readOnly, "the refused reopen changed nothing");
    await blk.removeRoot();
    await graph.reopen(top, { "read-only": true, file: "f" });
    assert((file.instance as FileInstance).readOnly && file.flags.readOnly, "read-only again");
    await top.unref("t");
    await graph.closeAll();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("file block status reports holes of a sparse file as zeros, data as data", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/sparse.img`;
    await fileDriver.create!({ filename: path, size: 4 << 20 }, registry);
    const graph = new Graph({ registry });
    for (const aio of ["io_uring", "native", "threads"]) {
      const node = await openFile(graph, path, { aio });
      await node.write(1 << 20, pattern(65536, 5));
      await node.flush();
      // The first 4 KiB were written at creation (QEMU's allocate_first_block).
      const hole = await node.blockStatus(4096, 4 << 20);
      assert(hole.status & BlockStatusFlags.ZERO, `${aio}: a hole is ZERO`);
      assertEquals(hole.pnum, (1 << 20) - 4096, `${aio}: up to the data`);
      const data = await node.blockStatus(1 << 20, 3 << 20);
      assert(data.status & BlockStatusFlags.DATA, `${aio}: written data is DATA`);
      assert(!(data.status & BlockStatusFlags.ZERO), `${aio}: not ZERO`);
      assertEquals(data.pnum, 65536, `${aio}: up to the next hole`);
      const tail = await node.blockStatus((1 << 20) + 65536, 4 << 20);
      assert(tail.status & BlockStatusFlags.ZERO, `${aio}: the trailing hole is ZERO`);
      await node.unref("test");
    }
    await graph.closeAll();
  });
});

Deno.test("file write-zeroes punches holes with MAY_UNMAP and zeroes ranges past the end", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/z.img`;
    await Deno.writeFile(path, pattern(1 << 20, 6));
    const graph = new Graph({ registry });
    const node = await openFile(graph, path, { aio: "io_uring", discard: "unmap" });
    const inst = node.instance as FileInstance;
    const before = await inst.allocatedSize();
    await node.pwriteZeroes(65536, 256 * 1024, ReqFlags.MAY_UNMAP);
    assert(await inst.allocatedSize() <= before - 256 * 1024, "the range was deallocated");
    await node.pwriteZeroes((1 << 20) - 4096, 8192, 0);
    assertEquals(node.getLength(), (1 << 20) + 4096, "ZERO_RANGE grew the file");
    await node.pdiscard(4096, 4096);
    const data = await Deno.readFile(path);
    assertBytesEqual(data.subarray(65536, 65536 + 256 * 1024), new Uint8Array(256 * 1024), "hole");
    assertBytesEqual(data.subarray((1 << 20) - 4096), new Uint8Array(8192), "zeroed tail");
    assertBytesEqual(data.subarray(4096, 8192), new Uint8Array(4096), "discarded");
    assertBytesEqual(data.subarray(0, 4096), pattern(1 << 20, 6).subarray(0, 4096), "kept");
    await node.unref("test");
    await graph.closeAll();
  });
});

Deno.test("file close with requests in flight completes every one and nothing hangs", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/c.img`;
    await fileDriver.create!({ filename: path, size: 8 << 20 }, registry);
    const graph = new Graph({ registry });
    for (
      const extra of [
        { aio: "io_uring" },
        { aio: "io_uring", cache: { direct: true } },
        { aio: "native", cache: { direct: true } },
        { aio: "threads" },
      ]
    ) {
      const node = await openFile(graph, path, extra);
      const results: string[] = [];
      const reqs: Promise<void>[] = [];
      for (let i = 0; i < 200; i++) {
        const buf = new Uint8Array(16384).fill(i);
        const p = i % 3 ? node.write(i * 16384, buf) : node.read(i * 16384, buf);
        reqs.push(p.then(() => void results.push("ok"), (e) => void results.push(e.code)));
      }
      await node.unref("test");
      await Promise.all(reqs);
      assertEquals(results.length, 200, "every request settled");
      assert(results.every((r) => r === "ok" || r === "ECANCELED"), results.join(","));
    }
    await graph.closeAll();
  });
});

/** What the script run without FFI does with a file node; it prints a JSON line. */
const NO_FFI_SCRIPT = `
import { DriverRegistry, Graph } from "@blockgraph/core";
import { fileDriver } from "@blockgraph/drivers";
const [dir] = Deno.args;
const registry = new DriverRegistry([fileDriver]);
await fileDriver.create({ filename: dir + "/n.img", size: 65536, preallocation: "full" }, registry);
const graph = new Graph({ registry });
const node = await graph.open({ driver: "file", filename: dir + "/n.img" }, "t");
await node.write(1000, new Uint8Array(3000).fill(7));
await node.flush();
await node.truncate(131072, true, "off");
const back = new Uint8Array(3000);
await node.read(1000, back);
const missing = await graph.open({ driver: "file", filename: dir + "/nope" }, "t").catch((e) => e);
console.log(JSON.stringify({
  aio: node.instance.aio,
  readBack: back.every((b) => b === 7),
  length: node.getLength(),
  allocated: await node.instance.allocatedSize(),
  missing: missing.message,
}));
await node.unref("t");
await graph.closeAll();
`;

Deno.test("file works without FFI: node:fs opens the file for the threads engine", async () => {
  await withTempDir(async (dir) => {
    const root = new URL("../../../", import.meta.url);
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["run", "--allow-read", "--allow-write", "--allow-env", "-", dir],
      cwd: root,
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const writer = out.stdin.getWriter();
    await writer.write(new TextEncoder().encode(NO_FFI_SCRIPT));
    await writer.close();
    const { code, stdout, stderr } = await out.output();
    const err = new TextDecoder().decode(stderr);
    assertEquals(code, 0, `exit status (stderr: ${err})`);
    assert(
      err.includes("blockgraph: file: io_uring unavailable (Requires ffi access") &&
        err.includes("using threads"),
      `the fallback is reported: ${err}`,
    );
    const r = JSON.parse(new TextDecoder().decode(stdout));
    assertEquals(r.aio, "threads", "engine");
    assert(r.readBack, "the write reads back");
    assertEquals(r.length, 131072, "length after truncate");
    assertEquals((await Deno.stat(`${dir}/n.img`)).size, 131072, "size on disk");
    assert(r.allocated >= 65536, `full preallocation allocated (${r.allocated})`);
    assertEquals(
      r.missing,
      `Could not open '${dir}/nope': No such file or directory`,
      "a missing file's error",
    );
  });
});

Deno.test("file create allocates the first block of a non-empty file, as QEMU's allocate_first_block", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const cases: [number, number][] = [[0, 0], [512, 512], [1000, 512], [4096, 4096], [
      1 << 20,
      4096,
    ]];
    for (const [size, first] of cases) {
      const path = `${dir}/f${size}.raw`;
      await fileDriver.create!({ filename: path, size }, new DriverRegistry([fileDriver]));
      const st = await Deno.stat(path);
      assert(st.size === Math.ceil(size / 512) * 512, `size ${size}: length ${st.size}`);
      // 512-byte blocks allocated: none for an empty file, one file system block otherwise.
      assert((st.blocks! > 0) === (first > 0), `size ${size}: ${st.blocks} blocks`);
      if (first === 0) continue;
      const graph = new Graph({ registry: new DriverRegistry([fileDriver]) });
      const node = await graph.open({ driver: "file", filename: path, "read-only": true }, "t");
      try {
        const bs = await node.blockStatus(0, node.getLength(), true);
        assert((bs.status & BlockStatusFlags.DATA) !== 0, `size ${size}: data at 0`);
        assert(bs.pnum >= first && bs.pnum <= Math.max(first, 4096), `size ${size}: ${bs.pnum}`);
      } finally {
        await node.unref("t");
        await graph.closeAll();
      }
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("file write-behind starts writeback each time its window of bytes is written", async () => {
  await withTempDir(async (dir) => {
    if (!writebackObservable(dir)) return;
    const MiB = 1 << 20;
    const graph = new Graph({ registry });
    const nodes: Node[] = [];
    /**
     * Writes `bytes` in 512 KiB requests to a new 8 MiB file, and returns a descriptor on it
     * (the node stays open: closing it flushes).
     */
    const written = async (name: string, extra: Record<string, unknown>, bytes: number) => {
      const path = `${dir}/${name}`;
      await fileDriver.create!({ filename: path, size: 8 * MiB }, registry);
      const node = await openFile(graph, path, extra);
      nodes.push(node);
      for (let at = 0; at < bytes; at += MiB / 2) await node.write(at, pattern(MiB / 2, at));
      return fs.openSync(path, "r");
    };
    // Off by default: the kernel's own writeback waits some 30 s, so the pages stay dirty.
    const plain = await written("plain.img", {}, 2 * MiB);
    const behind = await written("behind.img", { "write-behind": MiB }, 3.5 * MiB);
    try {
      await new Promise((r) => setTimeout(r, 100));
      const stayed = dirtyPages(plain, 0, 2 * MiB)!;
      if (stayed === 0) {
        console.log("the kernel wrote the pages back at once: write-behind not observable here");
        return;
      }
      // Windows ended at 1, 2 and 3 MiB; the last half MiB waits for the next.
      assertEquals(await dirtyAfter(behind, 0, 3 * MiB, 5000), 0, "dirty pages in the windows");
      assert(dirtyPages(behind, 3 * MiB, MiB / 2)! > 0, "the unfinished window stays dirty");
    } finally {
      fs.closeSync(plain);
      fs.closeSync(behind);
      for (const node of nodes) await node.unref("test");
      await graph.closeAll();
    }
  });
});
