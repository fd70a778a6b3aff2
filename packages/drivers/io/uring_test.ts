import fs from "node:fs";
import { IoVector } from "@blockgraph/core";
import { assert, assertBytesEqual, assertEquals } from "../conformance/mod.ts";
import { FALLOC } from "./engine.ts";
import type { IoEngine } from "./engine.ts";
import {
  type CreateEngine,
  openRw,
  rejectsAt,
  sharedEngineChecks,
  withDir,
} from "./engine_testing.ts";
import { createUringEngine } from "./uring.ts";
import { uringTuning } from "./uring_tuning.ts";

sharedEngineChecks("io_uring engine", createUringEngine, [1, 2]);

/**
 * The engine with small page-cache writes kept in the ring (they run inline by default while
 * the host has dirty-memory headroom): the switch is off during each call, where the engine
 * decides.
 */
function allThroughRing(create: CreateEngine): CreateEngine {
  return (options) => {
    const engine = create(options);
    return new Proxy(engine, {
      get(target, key) {
        const v = Reflect.get(target, key);
        if (typeof v !== "function") return v;
        return (...args: unknown[]) => {
          const saved = uringTuning.syncWrites;
          uringTuning.syncWrites = false;
          try {
            return v.apply(target, args);
          } finally {
            uringTuning.syncWrites = saved;
          }
        };
      },
    }) as IoEngine;
  };
}

sharedEngineChecks(
  "io_uring engine, page-cache writes in the ring",
  allThroughRing(createUringEngine),
  [
    3,
    4,
  ],
);

Deno.test("io_uring engine: fallocate punches holes and zeroes ranges; fsync both kinds", async () => {
  await withDir(async (dir) => {
    const path = `${dir}/f.img`;
    await Deno.writeFile(path, new Uint8Array(1 << 20).fill(0xaa));
    const fd = openRw(path, false);
    const engine = createUringEngine({ direct: false });
    try {
      await engine.fallocate(fd, FALLOC.PUNCH_HOLE | FALLOC.KEEP_SIZE, 65536, 65536);
      await engine.fallocate(fd, FALLOC.ZERO_RANGE, 1 << 20, 8192);
      await engine.fsync(fd, true);
      await engine.fsync(fd, false);
      const data = await Deno.readFile(path);
      assertEquals(data.length, (1 << 20) + 8192, "ZERO_RANGE past the end grows the file");
      assertBytesEqual(data.subarray(65536, 131072), new Uint8Array(65536), "the hole");
      assertEquals(data[65535], 0xaa, "before the hole");
      assertEquals(data[131072], 0xaa, "after the hole");
      // An unknown mode is the kernel's EOPNOTSUPP, which is ENOTSUP on Linux.
      await rejectsAt(engine.fallocate(fd, 0x80, 4096, 4096), "ENOTSUP", 4096);
      assertEquals(await engine.preadv(fd, 0, IoVector.of(new Uint8Array(16)), 0, 16), 16, "after");
    } finally {
      fs.closeSync(fd);
      await engine.release();
    }
  });
});

Deno.test("io_uring engine: one ring is shared and freed by the last user", async () => {
  await withDir(async (dir) => {
    const path = `${dir}/s.img`;
    await Deno.writeFile(path, new Uint8Array(8192).fill(3));
    const fd = openRw(path, false);
    const a = createUringEngine({ direct: false });
    const b = createUringEngine({ direct: false });
    await a.release();
    await a.release();
    const buf = new Uint8Array(8192);
    assertEquals(await b.preadv(fd, 0, IoVector.of(buf), 0, 8192), 8192, "b still works");
    assert(buf.every((x) => x === 3), "data");
    await b.release();
    const c = createUringEngine({ direct: false });
    assertEquals(await c.preadv(fd, 4096, IoVector.of(buf), 0, 8192), 4096, "a new ring, short");
    await c.release();
    fs.closeSync(fd);
  });
});
