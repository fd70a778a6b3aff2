import fs from "node:fs";
import { BlockError, IoVector } from "@blockgraph/core";
import { assert, assertEquals, assertRejectsWith } from "../conformance/mod.ts";
import { AIO_SLOTS, createAioEngine } from "./aio.ts";
import { libaio } from "./aio_ffi.ts";
import { FALLOC, type IoEngine } from "./engine.ts";
import { sharedEngineChecks } from "./engine_testing.ts";

const O_DIRECT = fs.constants.O_DIRECT;

/** A temp file of `size` bytes of `fill`, written for real (no fallocate), opened RW. */
async function withFile(
  size: number,
  direct: boolean,
  fn: (fd: number, engine: IoEngine, path: string) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "blockgraph-aio-" });
  const path = `${dir}/f.img`;
  await Deno.writeFile(path, new Uint8Array(size).fill(0xee));
  const fd = fs.openSync(path, fs.constants.O_RDWR | (direct ? O_DIRECT : 0));
  const engine = createAioEngine({ direct });
  try {
    await fn(fd, engine, path);
  } finally {
    await engine.drainFd(fd);
    fs.closeSync(fd);
    await engine.release();
    await Deno.remove(dir, { recursive: true });
  }
}

/** Deterministic bytes for (seed, position). */
function fillPattern(buf: Uint8Array, seed: number): void {
  for (let i = 0; i < buf.length; i++) buf[i] = (seed * 31 + i * 7 + (i >> 9)) & 0xff;
}

/** A small deterministic PRNG, so failures reproduce. */
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s * 1664525 + 1013904223) >>> 0;
    return s / 0x1_0000_0000;
  };
}

/** Splits `buf` into a vector of segments of the given sizes (the last takes the rest). */
function split(buf: Uint8Array, sizes: number[]): IoVector {
  const q = new IoVector();
  let at = 0;
  for (const n of sizes) {
    if (at >= buf.length) break;
    q.add(buf.subarray(at, Math.min(buf.length, at + n)));
    at += n;
  }
  if (at < buf.length) q.add(buf.subarray(at));
  return q;
}

function equalBytes(a: Uint8Array, b: Uint8Array, what: string): void {
  assertEquals(a.length, b.length, `${what}: length`);
  for (let i = 0; i < a.length; i++) {
    if (a[i] !== b[i]) throw new Error(`${what}: byte ${i} is ${a[i]}, expected ${b[i]}`);
  }
}

/**
 * Rounds of concurrent random writes to distinct blocks, then concurrent reads of random
 * ranges, every byte checked against a model of the file.
 */
async function randomRounds(direct: boolean): Promise<void> {
  const BLOCK = 4096;
  const BLOCKS = 256;
  await withFile(BLOCK * BLOCKS, direct, async (fd, engine) => {
    const model = new Uint8Array(BLOCK * BLOCKS).fill(0xee);
    const rand = rng(direct ? 7 : 11);
    for (let round = 0; round < 4; round++) {
      const writes: Promise<number>[] = [];
      const used = new Set<number>();
      for (let k = 0; k < 48; k++) {
        const first = Math.floor(rand() * BLOCKS);
        const count = 1 + Math.floor(rand() * 4);
        let free = true;
        for (let b = first; b < first + count; b++) if (b >= BLOCKS || used.has(b)) free = false;
        if (!free) continue;
        for (let b = first; b < first + count; b++) used.add(b);
        const data = new Uint8Array(count * BLOCK);
        fillPattern(data, round * 1000 + k);
        model.set(data, first * BLOCK);
        // Every third write goes as odd segments (bounced under O_DIRECT).
        const q = k % 3 === 0 ? split(data, [100, 3000, 5000]) : IoVector.of(data);
        writes.push(engine.pwritev(fd, first * BLOCK, q, 0, data.length, k % 5 === 0));
      }
      const written = await Promise.all(writes);
      for (const n of written) assert(n > 0 && n % BLOCK === 0, `write count ${n}`);
      const reads: Promise<void>[] = [];
      for (let k = 0; k < 64; k++) {
        const first = Math.floor(rand() * (BLOCKS - 8));
        const count = 1 + Math.floor(rand() * 8);
        const buf = new Uint8Array(count * BLOCK + 1);
        const view = k % 2 === 0 ? buf.subarray(0, count * BLOCK) : buf.subarray(1);
        const q = k % 4 === 1 ? split(view, [4096, 1, 4095, 777]) : IoVector.of(view);
        reads.push(
          engine.preadv(fd, first * BLOCK, q, 0, view.length).then((n) => {
            assertEquals(n, view.length, "read count");
            const want = model.subarray(first * BLOCK, first * BLOCK + view.length);
            equalBytes(q.toBuffer(), want, `round ${round} read ${k}`);
          }),
        );
      }
      await Promise.all(reads);
    }
  });
}

Deno.test("native engine random concurrent writes and reads verify, buffered", async () => {
  await randomRounds(false);
});

Deno.test("native engine random concurrent writes and reads verify, O_DIRECT", async () => {
  await randomRounds(true);
});

sharedEngineChecks("native engine", createAioEngine, [3, 4]);

Deno.test("native engine reads crossing the end of the file resolve with the bytes there, zeros after", async () => {
  for (const direct of [false, true]) {
    const size = 3 * 4096 + 100;
    await withFile(size, direct, async (fd, engine) => {
      const buf = new Uint8Array(8192).fill(1);
      const n = await engine.preadv(fd, 8192, IoVector.of(buf), 0, 8192);
      assertEquals(n, size - 8192, `short read count (direct=${direct})`);
      assertEquals(buf[n - 1], 0xee, "last byte before EOF");
      // What lies past the end reads as zeros (IoEngine.preadv).
      assertEquals(buf.subarray(n).every((b) => b === 0), true, "zeros past EOF");
      const past = await engine.preadv(fd, 16384, IoVector.of(new Uint8Array(4096)), 0, 4096);
      assertEquals(past, 0, "read past EOF");
    });
  }
});

Deno.test("native engine odd-size vectors and a vector offset write and read back", async () => {
  await withFile(65536, false, async (fd, engine) => {
    const data = new Uint8Array(10007);
    fillPattern(data, 3);
    const sizes = [1, 3, 7, 511, 4097, 13, 2048, 5];
    const q = split(data, sizes);
    // Write bytes [5, 10005) of the vector at offset 123.
    assertEquals(await engine.pwritev(fd, 123, q, 5, 10000, false), 10000, "write");
    const back = new Uint8Array(10000);
    const rq = split(back, [9, 1, 4096, 3]);
    assertEquals(await engine.preadv(fd, 123, rq, 0, 10000), 10000, "read");
    equalBytes(back, data.subarray(5, 10005), "data");
    // More segments than a slot's iovec array: the request is bounced whole.
    const many = split(new Uint8Array(300), new Array(300).fill(1));
    assertEquals(many.iov.length, 300, "segments");
    assertEquals(await engine.preadv(fd, 123, many, 0, 300), 300, "many segments");
    equalBytes(many.toBuffer(), data.subarray(5, 305), "many segments data");
  });
});

Deno.test("native engine O_DIRECT bounces unaligned segments and keeps aligned ones", async () => {
  await withFile(65536, true, async (fd, engine) => {
    const data = new Uint8Array(16384);
    fillPattern(data, 9);
    // Unaligned start and a segment boundary inside a block.
    const raw = new Uint8Array(16384 + 5);
    raw.set(data, 5);
    const q = split(raw.subarray(5), [4096 + 17, 8192 - 17]);
    assertEquals(await engine.pwritev(fd, 8192, q, 0, 16384, true), 16384, "write");
    const back = new Uint8Array(16384 + 3);
    const rq = split(back.subarray(3), [512, 4096 - 512]);
    assertEquals(await engine.preadv(fd, 8192, rq, 0, 16384), 16384, "read");
    equalBytes(back.subarray(3), data, "data");
  });
});

Deno.test("native engine errors carry the errno code and offset, and the engine goes on", async () => {
  await withFile(65536, true, async (fd, engine) => {
    const buf = new Uint8Array(4096);
    const e1 = await assertRejectsWith(
      engine.preadv(fd, 1, IoVector.of(buf), 0, 4096),
      "EINVAL",
      "misaligned O_DIRECT offset",
    );
    assertEquals(e1.offset, 1, "offset of EINVAL");
    assertEquals(e1.op, "read", "op of EINVAL");
    await assertRejectsWith(
      engine.pwritev(fd, 4096, IoVector.of(buf), 0, 100, false),
      "EINVAL",
      "misaligned O_DIRECT length",
    );
    const closed = fs.openSync("/dev/null", "r");
    fs.closeSync(closed);
    const e2 = await assertRejectsWith(
      engine.preadv(closed, 8192, IoVector.of(buf), 0, 4096),
      "EBADF",
      "closed descriptor",
    );
    assertEquals(e2.offset, 8192, "offset of EBADF");
    assert(e2 instanceof BlockError, "BlockError");
    // A batch mixing good and bad requests: each settles on its own.
    const results = await Promise.allSettled([
      engine.preadv(fd, 0, IoVector.of(new Uint8Array(4096)), 0, 4096),
      engine.preadv(closed, 0, IoVector.of(new Uint8Array(4096)), 0, 4096),
      engine.preadv(fd, 4096, IoVector.of(new Uint8Array(4096)), 0, 4096),
    ]);
    assertEquals(results.map((r) => r.status).join(), "fulfilled,rejected,fulfilled", "batch");
    assertEquals(await engine.preadv(fd, 0, IoVector.of(buf), 0, 4096), 4096, "still works");
    await assertRejectsWith(engine.fsync(closed, true), "EBADF", "fsync of a closed fd");
  });
});

Deno.test("native engine flushes, and fallocate punches holes and reports -errno", async () => {
  await withFile(65536, false, async (fd, engine) => {
    await engine.fsync(fd, true);
    await engine.fsync(fd, false);
    await engine.fallocate(fd, FALLOC.PUNCH_HOLE | FALLOC.KEEP_SIZE, 4096, 8192);
    const buf = new Uint8Array(16384);
    assertEquals(await engine.preadv(fd, 0, IoVector.of(buf), 0, 16384), 16384, "read");
    assertEquals(buf[4095], 0xee, "before the hole");
    assert(buf.subarray(4096, 12288).every((b) => b === 0), "hole reads zeros");
    assertEquals(buf[12288], 0xee, "after the hole");
    // PUNCH_HOLE without KEEP_SIZE is refused by the kernel (EOPNOTSUPP).
    const e = await assertRejectsWith(
      engine.fallocate(fd, FALLOC.PUNCH_HOLE, 0, 4096),
      "ENOTSUP",
      "punch without keep-size",
    );
    assertEquals(e.offset, 0, "fallocate offset");
    await assertRejectsWith(engine.fallocate(-1, 0, 0, 4096), "EBADF", "fallocate bad fd");
    await engine.fallocate(fd, 0, 65536, 4096);
    assertEquals(fs.fstatSync(fd).size, 65536 + 4096, "fallocate mode 0 grows the file");
  });
});

Deno.test("native engine queues requests beyond its slots and runs them all", async () => {
  await withFile(4096 * 64, false, async (fd, engine) => {
    const n = AIO_SLOTS * 2 + 17;
    const bufs = Array.from({ length: n }, () => new Uint8Array(512));
    const all = bufs.map((b, i) => engine.preadv(fd, (i % 64) * 4096, IoVector.of(b), 0, 512));
    const counts = await Promise.all(all);
    assert(counts.every((c) => c === 512), "every read completes");
    assert(bufs.every((b) => b[0] === 0xee && b[511] === 0xee), "every read has the data");
  });
});

Deno.test("native engine handles share one context; a released handle refuses work", async () => {
  await withFile(8192, false, async (fd, engine) => {
    const other = createAioEngine({ direct: false });
    assertEquals(other.name, "native", "name");
    await other.release();
    await other.release();
    await assertRejectsWith(
      other.preadv(fd, 0, IoVector.of(new Uint8Array(10)), 0, 10),
      "ESHUTDOWN",
      "released handle",
    );
    assertEquals(await engine.preadv(fd, 0, IoVector.of(new Uint8Array(10)), 0, 10), 10, "other");
  });
});

Deno.test({
  name: "native engine drainFd and release with requests in flight settle all of them",
  sanitizeOps: true,
  sanitizeResources: true,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "blockgraph-aio-" });
    const path = `${dir}/f.img`;
    await Deno.writeFile(path, new Uint8Array(1 << 20).fill(1));
    const fd = fs.openSync(path, fs.constants.O_RDWR | O_DIRECT);
    const fd2 = fs.openSync(path, fs.constants.O_RDWR | O_DIRECT);
    const engine = createAioEngine({ direct: true });
    const second = createAioEngine({ direct: true });
    const make = (f: number, i: number) =>
      i % 2
        ? engine.preadv(f, (i % 256) * 4096, IoVector.of(new Uint8Array(4096)), 0, 4096)
        : engine.pwritev(f, (i % 256) * 4096, IoVector.of(new Uint8Array(4096)), 0, 4096, false);
    const onFd = Array.from({ length: AIO_SLOTS + 40 }, (_, i) => make(fd, i));
    const onFd2 = Promise.allSettled(Array.from({ length: 40 }, (_, i) => make(fd2, i)));
    const onFdSettled = Promise.allSettled(onFd);
    await engine.drainFd(fd);
    const settled = await onFdSettled;
    let cancelled = 0;
    for (const r of settled) {
      if (r.status === "rejected") {
        assert(r.reason instanceof BlockError && r.reason.code === "ECANCELED", `${r.reason}`);
        cancelled++;
      }
    }
    // Those beyond the slots never reached the kernel: drainFd cancels them.
    assert(cancelled > 0 && cancelled <= 40, `cancelled ${cancelled}`);
    fs.closeSync(fd);
    // The other descriptor's requests are still in flight when the engine is released.
    await engine.release();
    await second.release();
    const settled2 = await onFd2;
    assert(settled2.every((r) => r.status === "fulfilled"), "fd2 requests complete");
    fs.closeSync(fd2);
    await Deno.remove(dir, { recursive: true });
  },
});

Deno.test("native engine says which library is missing", () => {
  try {
    libaio("libaio-missing.so.1");
    throw new Error("loaded a library that does not exist");
  } catch (e) {
    assert(e instanceof BlockError, "BlockError");
    assertEquals(e.code, "ENOTSUP", "code");
    assertEquals(e.message, "libaio-missing.so.1 not found (install libaio1)", "message");
  }
});
