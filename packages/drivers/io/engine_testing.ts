/**
 * Checks every I/O engine's tests share: random concurrent vectored I/O verified against a
 * model, kernel errors, and draining with requests in flight. Test support only; not part
 * of the package's public surface.
 *
 * @module
 */

import fs from "node:fs";
import { BlockError, IoVector } from "@blockgraph/core";
import { assert, assertBytesEqual, assertEquals } from "../conformance/mod.ts";
import { BufferPool } from "./buffer_pool.ts";
import type { EngineOptions, IoEngine } from "./engine.ts";
import { lastErrno } from "./libc.ts";
import { socketLibc, SYS_CACHESTAT } from "./socket_libc.ts";

/** A factory under test. */
export type CreateEngine = (options: EngineOptions) => IoEngine;

/** A small deterministic PRNG (xorshift32), so failures reproduce. */
export function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x / 0x1_0000_0000;
  };
}

/** Runs `fn` with a temporary directory, removed afterwards. */
export async function withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "blockgraph-io-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** Opens `path` read-write through node:fs (so every engine accepts the descriptor). */
export function openRw(path: string, direct: boolean): number {
  return fs.openSync(path, fs.constants.O_RDWR | (direct ? fs.constants.O_DIRECT : 0));
}

/**
 * Splits `len` bytes into a vector of odd-sized segments; with `aligned` set, some segments
 * are page-aligned views of `pool` memory (which O_DIRECT takes without bouncing).
 */
function oddVector(len: number, next: () => number, pool: BufferPool | null): IoVector {
  const q = new IoVector();
  let left = len;
  while (left > 0) {
    if (pool && next() < 0.3 && left >= 4096) {
      const n = Math.min(left, 4096 * (1 + Math.floor(next() * 4))) & ~4095;
      q.add(pool.get(n).bytes.subarray(0, n));
      left -= n;
      continue;
    }
    const n = Math.min(left, 1 + Math.floor(next() * 5000));
    q.add(new Uint8Array(n));
    left -= n;
  }
  return q;
}

/**
 * Random concurrent reads and writes in disjoint chunks, in rounds of 16, checked against a
 * model; the last chunk runs past the end of the file so reads come back short, with the rest
 * of the vector filled with zeros.
 */
export async function randomIo(create: CreateEngine, direct: boolean, seed: number) {
  await withDir(async (dir) => {
    const chunk = 64 * 1024;
    const chunks = 24;
    const size = chunks * chunk - 3 * 4096 + (direct ? 0 : 1000);
    const model = new Uint8Array(size);
    const next = rng(seed);
    for (let i = 0; i < size; i++) model[i] = (i * 7 + 3) & 0xff;
    const path = `${dir}/e.img`;
    await Deno.writeFile(path, model);
    const fd = openRw(path, direct);
    const engine = create({ direct });
    const pool = direct ? new BufferPool() : null;
    try {
      for (let round = 0; round < 12; round++) {
        const order = [...Array(chunks).keys()].sort(() => next() - 0.5).slice(0, 16);
        const ops: Promise<void>[] = [];
        const writes: [number, Uint8Array][] = [];
        for (const c of order) {
          const unit = direct ? 4096 : 1;
          const off = c * chunk + Math.floor(next() * (chunk / 2 / unit)) * unit;
          const len = Math.max(unit, Math.floor(next() * (chunk / 2 / unit)) * unit);
          const q = oddVector(len, next, pool);
          if (next() < 0.5 && off + len <= size) {
            const data = new Uint8Array(len).map(() => Math.floor(next() * 256));
            q.copyFrom(0, data, 0, len);
            writes.push([off, data]);
            ops.push(
              engine.pwritev(fd, off, q, 0, len, next() < 0.2).then((n) => {
                assertEquals(n, len, `write of ${len} at ${off}`);
              }),
            );
          } else {
            const want = Math.max(0, Math.min(len, size - off));
            const expect = model.slice(off, off + want);
            // Stale bytes, so that a tail the engine leaves unfilled shows.
            q.fill(0, len, 0xee);
            ops.push(
              engine.preadv(fd, off, q, 0, len).then((n) => {
                assertEquals(n, want, `read of ${len} at ${off} (file of ${size})`);
                assertBytesEqual(q.toBuffer(0, n), expect, `data at ${off}`);
                assertBytesEqual(
                  q.toBuffer(n, len - n),
                  new Uint8Array(len - n),
                  "zeros past the end",
                );
              }),
            );
          }
        }
        await Promise.all(ops);
        for (const [off, data] of writes) model.set(data, off);
      }
      // One read across the end for certain: the part past it reads as zeros.
      const at = size - 4096;
      const q = oddVector(12288, next, pool);
      q.fill(0, 12288, 0xee);
      assertEquals(await engine.preadv(fd, at, q, 0, 12288), 4096, "read across the end");
      assertBytesEqual(q.toBuffer(0, 4096), model.subarray(at), "data before the end");
      assertBytesEqual(q.toBuffer(4096, 8192), new Uint8Array(8192), "zeros past the end");
      await engine.fsync(fd, true);
      assertBytesEqual(await Deno.readFile(path), model, "the file matches the model");
    } finally {
      await engine.drainFd(fd);
      fs.closeSync(fd);
      await engine.release();
      pool?.destroy();
    }
  });
}

/** Asserts that `p` rejects with a BlockError of `code` at `offset`. */
export async function rejectsAt(p: Promise<unknown>, code: string, offset: number) {
  try {
    await p;
  } catch (e) {
    assert(e instanceof BlockError, `a BlockError, not ${e}`);
    assertEquals(e.code, code, `code (${e.message})`);
    assertEquals(e.offset, offset, `offset (${e.message})`);
    return;
  }
  throw new Error(`expected ${code}, the request succeeded`);
}

/**
 * EBADF on a descriptor that is not open and EINVAL for a misaligned O_DIRECT offset, each
 * followed by a request that works.
 */
export async function kernelErrors(create: CreateEngine): Promise<void> {
  await withDir(async (dir) => {
    const path = `${dir}/k.img`;
    await Deno.writeFile(path, new Uint8Array(65536).fill(0x11));
    const fd = openRw(path, true);
    const engine = create({ direct: true });
    try {
      const buf = new Uint8Array(4096);
      await rejectsAt(engine.preadv(1 << 20, 8192, IoVector.of(buf), 0, 4096), "EBADF", 8192);
      assertEquals(await engine.preadv(fd, 0, IoVector.of(buf), 0, 4096), 4096, "after EBADF");
      await rejectsAt(engine.preadv(fd, 100, IoVector.of(buf), 0, 4096), "EINVAL", 100);
      await rejectsAt(
        engine.pwritev(fd, 4196, IoVector.of(buf), 0, 4096, false),
        "EINVAL",
        4196,
      );
      assertEquals(await engine.preadv(fd, 4096, IoVector.of(buf), 0, 4096), 4096, "after EINVAL");
      assertEquals(buf[0], 0x11, "data after EINVAL");
    } finally {
      await engine.drainFd(fd);
      fs.closeSync(fd);
      await engine.release();
    }
  });
}

/**
 * ENOSPC on a 1 MiB tmpfs, then a request that works. Returns false (after logging why) when
 * no tmpfs can be mounted here.
 */
export async function enospc(create: CreateEngine): Promise<boolean> {
  const dir = await Deno.makeTempDir({ prefix: "blockgraph-enospc-" });
  const mount = await new Deno.Command("mount", {
    args: ["-t", "tmpfs", "-o", "size=1M", "tmpfs", dir],
    stderr: "piped",
  }).output().catch((e) => ({ success: false, stderr: new TextEncoder().encode(String(e)) }));
  if (!mount.success) {
    console.log(`skipping ENOSPC: cannot mount a tmpfs: ${new TextDecoder().decode(mount.stderr)}`);
    await Deno.remove(dir);
    return false;
  }
  try {
    const path = `${dir}/full.img`;
    await Deno.writeFile(path, new Uint8Array(0));
    const fd = openRw(path, false);
    const engine = create({ direct: false });
    try {
      const big = new Uint8Array(256 * 1024).fill(0x5a);
      let failedAt = -1;
      for (let off = 0; off < 4 << 20; off += big.length) {
        try {
          const n = await engine.pwritev(fd, off, IoVector.of(big), 0, big.length, false);
          if (n < big.length) {
            await rejectsAt(
              engine.pwritev(fd, off + n, IoVector.of(big), n, big.length - n, false),
              "ENOSPC",
              off + n,
            );
            failedAt = off + n;
            break;
          }
        } catch (e) {
          assert(e instanceof BlockError && e.code === "ENOSPC", `ENOSPC, not ${e}`);
          assertEquals(e.offset, off, "offset of the failed write");
          failedAt = off;
          break;
        }
      }
      assert(failedAt >= 0, "a 1 MiB tmpfs filled up");
      const back = new Uint8Array(4096);
      assertEquals(await engine.preadv(fd, 0, IoVector.of(back), 0, 4096), 4096, "read after");
      assertEquals(back[4095], 0x5a, "data after ENOSPC");
      await engine.drainFd(fd);
      fs.closeSync(fd);
      await engine.release();
    } catch (e) {
      await engine.drainFd(fd);
      fs.closeSync(fd);
      await engine.release();
      throw e;
    }
  } finally {
    await new Deno.Command("umount", { args: [dir] }).output();
    await Deno.remove(dir, { recursive: true });
  }
  return true;
}

/**
 * Queues many reads and writes, then drains the descriptor at once: every request settles,
 * each either done or ECANCELED, and the engine is released cleanly.
 */
export async function drainInFlight(create: CreateEngine, direct: boolean): Promise<void> {
  await withDir(async (dir) => {
    const path = `${dir}/d.img`;
    await Deno.writeFile(path, new Uint8Array(4 << 20));
    const fd = openRw(path, direct);
    const engine = create({ direct });
    const settled: string[] = [];
    const reqs: Promise<void>[] = [];
    for (let i = 0; i < 300; i++) {
      const q = IoVector.of(new Uint8Array(8192).fill(i & 0xff));
      const off = (i * 8192) % (4 << 20);
      const p = i % 2
        ? engine.pwritev(fd, off, q, 0, 8192, false)
        : engine.preadv(fd, off, q, 0, 8192);
      reqs.push(p.then(
        (n) => void settled.push(n === 8192 ? "done" : `short ${n}`),
        (e) => void settled.push(e instanceof BlockError ? e.code : String(e)),
      ));
    }
    await engine.drainFd(fd);
    await Promise.all(reqs);
    fs.closeSync(fd);
    await engine.release();
    assertEquals(settled.length, 300, "every request settled");
    const bad = settled.filter((s) => s !== "done" && s !== "ECANCELED");
    assertEquals(bad.join(","), "", "each request completed or was cancelled");
  });
}

/**
 * Floods a page-cache file with 4 KiB writes at depth 32 for 400 ms, each worker writing again
 * as soon as one completes, while a 2 ms interval timer runs beside it; returns the writes
 * done and the timer's gaps (ms), longest first. Page-cache writes can complete at once (inside
 * `io_submit`, inline in `io_uring_enter`), so an engine that settles them without ever
 * returning to the event loop starves timers. Before the engines took turns for them, kernel
 * AIO let a timer run once in the whole flood; io_uring, whose pool-thread waits let sockets
 * through but not always timers, gave gaps of 25–45 ms in some runs here (p90 24.8 ms in one
 * of three; `img bench` page-cache randwrite at depth 32: lag p99 30–50 ms), about 5 ms after.
 */
export async function pageCacheFlood(
  create: CreateEngine,
): Promise<{ writes: number; gaps: number[] }> {
  let writes = 0;
  const gaps: number[] = [];
  await withDir(async (dir) => {
    const path = `${dir}/f.img`;
    // Sparse, so that writes allocate: ext4 then hands them to io_uring's io-wq workers.
    const size = 1 << 30;
    await Deno.writeFile(path, new Uint8Array(0));
    await Deno.truncate(path, size);
    const fd = openRw(path, false);
    const engine = create({ direct: false });
    let last = performance.now();
    const timer = setInterval(() => {
      const now = performance.now();
      gaps.push(now - last);
      last = now;
    }, 2);
    const next = rng(7);
    const t0 = performance.now();
    const worker = async () => {
      const q = IoVector.of(new Uint8Array(4096).fill(0x5a));
      while (performance.now() - t0 < 400) {
        await engine.pwritev(fd, Math.floor(next() * (size / 4096)) * 4096, q, 0, 4096, false);
        writes++;
      }
    };
    try {
      await Promise.all(Array.from({ length: 32 }, worker));
    } finally {
      clearInterval(timer);
      gaps.push(performance.now() - last);
      fs.closeSync(fd);
      await engine.release();
    }
  });
  return { writes, gaps: gaps.sort((a, b) => b - a) };
}

/**
 * The dirty page-cache pages of `[offset, offset + bytes)` of `fd` by `cachestat(2)`, or null
 * where the kernel has no such call (before Linux 6.5).
 */
export function dirtyPages(fd: number, offset: number, bytes: number): number | null {
  const range = new BigUint64Array([BigInt(offset), BigInt(bytes)]);
  // struct cachestat: nr_cache, nr_dirty, nr_writeback, nr_evicted, nr_recently_evicted.
  const stat = new BigUint64Array(5);
  const rc = socketLibc().cachestat(
    SYS_CACHESTAT,
    fd,
    new Uint8Array(range.buffer),
    new Uint8Array(stat.buffer),
    0,
  );
  if (rc !== 0) {
    if (lastErrno() === 38) return null; // ENOSYS
    throw new Error(`cachestat failed: errno ${lastErrno()}`);
  }
  return Number(stat[1]);
}

/** The file system type of the mount holding `path` (`/proc/self/mounts`), or "" if unknown. */
export function fsTypeOf(path: string): string {
  const real = Deno.realPathSync(path);
  let best = "";
  let type = "";
  for (const line of Deno.readTextFileSync("/proc/self/mounts").split("\n")) {
    const [, at, fstype] = line.split(" ");
    if (at === undefined || fstype === undefined) continue;
    const mount = at.replace(/\\040/g, " ");
    const inside = mount === "/" || real === mount || real.startsWith(mount + "/");
    if (inside && mount.length >= best.length) {
      best = mount;
      type = fstype;
    }
  }
  return type;
}

/**
 * Polls until `fd` has no dirty pages in `[offset, offset + bytes)`, for at most `ms`; returns
 * the last count seen.
 */
export async function dirtyAfter(
  fd: number,
  offset: number,
  bytes: number,
  ms: number,
): Promise<number> {
  const until = performance.now() + ms;
  for (;;) {
    const n = dirtyPages(fd, offset, bytes) ?? 0;
    if (n === 0 || performance.now() > until) return n;
    await new Promise((r) => setTimeout(r, 10));
  }
}

/**
 * Whether writeback can be watched in `dir`: the kernel has `cachestat(2)` and the file system
 * writes back (not tmpfs or ramfs, whose pages stay in memory). Says why not on the console.
 */
export function writebackObservable(dir: string): boolean {
  const type = fsTypeOf(dir);
  if (type === "tmpfs" || type === "ramfs") {
    console.log(`${dir} is on ${type}, which has no writeback: not checked`);
    return false;
  }
  const fd = fs.openSync(dir, "r");
  try {
    if (dirtyPages(fd, 0, 1) === null) {
      console.log("no cachestat(2) on this kernel: writeback not checked");
      return false;
    }
  } catch {
    // A directory has no page cache of its own on some kernels: the call still exists.
  } finally {
    fs.closeSync(fd);
  }
  return true;
}

/**
 * `startWriteback` never rejects (not even on a descriptor that is not open); with `writesBack`
 * it leaves no dirty pages behind in the range it names, where that can be watched, while the
 * pages outside the range stay dirty.
 */
export async function startsWriteback(create: CreateEngine, writesBack: boolean): Promise<void> {
  const engine = create({ direct: false });
  try {
    await engine.startWriteback(-1, 0, 4096);
    await withDir(async (dir) => {
      const path = `${dir}/w.img`;
      await Deno.writeFile(path, new Uint8Array(0));
      const fd = openRw(path, false);
      try {
        const MiB = 1 << 20;
        const q = IoVector.of(new Uint8Array(MiB).fill(0xa5));
        for (let i = 0; i < 4; i++) await engine.pwritev(fd, i * MiB, q, 0, MiB, false);
        if (!writesBack || !writebackObservable(dir)) {
          await engine.startWriteback(fd, 0, 2 * MiB);
          return;
        }
        const before = dirtyPages(fd, 0, 4 * MiB)!;
        if (before === 0) {
          console.log("the writes left no dirty pages to watch: writeback not checked");
          return;
        }
        await engine.startWriteback(fd, 0, 2 * MiB);
        const left = await dirtyAfter(fd, 0, 2 * MiB, 5000);
        assertEquals(left, 0, "dirty pages left in the range after writeback started");
        // The kernel's own writeback waits some 30 s; the second half is still dirty.
        const rest = dirtyPages(fd, 2 * MiB, 2 * MiB)!;
        assert(
          rest > 0,
          `the range outside the hint was written back too (${before} dirty before)`,
        );
      } finally {
        fs.closeSync(fd);
      }
    });
  } finally {
    await engine.release();
  }
}

/**
 * Registers the checks every engine shares as one test of steps, named after `label`: random
 * concurrent vectored I/O against the model, buffered (with `seeds[0]`) and O_DIRECT (with
 * `seeds[1]`); EBADF and EINVAL; ENOSPC; drainFd with requests in flight (buffered, and
 * O_DIRECT too unless `drainDirect` is false); timers running beside a flood of page-cache
 * writes; and `startWriteback` (which starts writeback unless `writesBack` is false).
 */
export function sharedEngineChecks(
  label: string,
  create: CreateEngine,
  seeds: readonly [number, number],
  drainDirect = true,
  writesBack = true,
): void {
  Deno.test(`${label} passes the checks every engine shares`, async (t) => {
    await t.step("random concurrent vectored I/O agrees with the model", async () => {
      await randomIo(create, false, seeds[0]);
      await randomIo(create, true, seeds[1]);
    });
    await t.step("EBADF and EINVAL carry errno and offset, and the engine goes on", async () => {
      await kernelErrors(create);
    });
    await t.step("ENOSPC on a full file system, and the engine goes on", async () => {
      await enospc(create);
    });
    await t.step("drainFd with requests in flight settles every one", async () => {
      await drainInFlight(create, false);
      if (drainDirect) await drainInFlight(create, true);
    });
    await t.step("startWriteback starts writeback of the range, and never rejects", async () => {
      await startsWriteback(create, writesBack);
    });
    await t.step("a flood of page-cache writes lets timers run", async () => {
      const { writes, gaps } = await pageCacheFlood(create);
      // With the turns the longest gap is about 10 ms (TIMER_STARVED_MS, then a zero
      // timeout); the bound leaves room for a loaded machine.
      assert(writes > 1000, `writes ${writes}`);
      assert(gaps.length >= 10, `a 2 ms timer ran ${gaps.length} times in 400 ms`);
      const p90 = gaps[Math.floor(gaps.length / 10)]!;
      assert(
        p90 < 25,
        `a 2 ms timer waited ${p90.toFixed(1)} ms at p90 (longest first: ${
          gaps.slice(0, 8).map((g) => g.toFixed(0)).join(" ")
        })`,
      );
    });
  });
}
