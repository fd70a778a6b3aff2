import {
  type BlockDriver,
  BlockStatusFlags,
  type DriverInstance,
  DriverRegistry,
  type IoVector,
} from "@blockgraph/core";
import { memoryDriver, type MemoryInstance } from "../protocols/memory.ts";
import { nullDriver } from "../protocols/null.ts";
import { assertEquals, AssertionError } from "./assertions.ts";
import { conformanceCases } from "./cases.ts";
import { runCase } from "./suite.ts";
import {
  CONFORMANCE_HOLDER,
  type ConformanceCapabilities,
  type ConformanceCase,
  type ConformanceTarget,
} from "./target.ts";

const MEMORY_CAPS: ConformanceCapabilities = {
  persistent: true,
  resize: true,
  growsOnWrite: true,
  discardGranularity: 65536,
};

/** A memory driver with one behaviour broken by `patch`. */
function brokenMemory(patch: (inst: MemoryInstance) => void): ConformanceTarget {
  const driver: BlockDriver = {
    ...memoryDriver,
    async open(ctx, options): Promise<DriverInstance> {
      const inst = (await memoryDriver.open(ctx, options)) as MemoryInstance;
      patch(inst);
      return inst;
    },
  };
  return {
    registry: new DriverRegistry([driver]),
    capabilities: MEMORY_CAPS,
    open: (graph, { readOnly }) =>
      graph.open(
        { driver: "memory", size: 4 << 20, discard: "unmap", "read-only": readOnly },
        CONFORMANCE_HOLDER,
      ),
  };
}

function caseNamed(name: string): ConformanceCase {
  const c = conformanceCases().find((c) => c.name === name);
  if (!c) throw new Error(`no conformance case '${name}'`);
  return c;
}

async function expectCaught(target: ConformanceTarget, name: string): Promise<string> {
  try {
    await runCase(target, caseNamed(name));
  } catch (e) {
    if (e instanceof AssertionError) return e.message;
    throw e;
  }
  throw new Error(`conformance case '${name}' passed a broken driver`);
}

Deno.test("conformance catches a driver that drops the last byte of writes", async () => {
  const target = brokenMemory((inst) => {
    const write = inst.pwritev.bind(inst);
    inst.pwritev = (o: number, b: number, q: IoVector, qo: number) =>
      write(o, b > 1 ? b - 1 : b, q, qo);
  });
  await expectCaught(target, "write then read at odd offsets and lengths");
  await expectCaught(target, "random operations agree with the model");
});

Deno.test("conformance catches block status that calls data ZERO", async () => {
  const target = brokenMemory((inst) => {
    inst.blockStatus = (_w: boolean, offset: number, bytes: number) => ({
      status: BlockStatusFlags.ZERO,
      pnum: bytes,
      map: offset,
    });
  });
  const message = await expectCaught(
    target,
    "block status covers the disk and agrees with the data",
  );
  assertEquals(message.includes("ZERO"), true, `message names ZERO: ${message}`);
});

Deno.test("conformance catches a discard that leaves garbage", async () => {
  const target = brokenMemory((inst) => {
    inst.pdiscard = (offset: number, bytes: number) =>
      inst.pwritev(offset, bytes, {
        fill() {},
        copyTo(_o: number, dst: Uint8Array) {
          dst.fill(0xee);
        },
      } as unknown as IoVector, 0);
  });
  await expectCaught(target, "discarded data reads back as before or as zeros");
});

Deno.test("conformance catches a discard that keeps whole promised granules", async () => {
  const target = brokenMemory((inst) => {
    inst.pdiscard = () => Promise.resolve();
  });
  await expectCaught(target, "discarded data reads back as before or as zeros");
});

Deno.test("conformance catches a shrink that keeps the cut-off data", async () => {
  const target = brokenMemory((inst) => {
    const realLength = inst.getLength.bind(inst);
    const realTruncate = inst.truncate.bind(inst);
    let shownLength: number | null = null;
    inst.getLength = () => shownLength ?? realLength();
    // A shrink only changes the length shown; growing again brings the old bytes back.
    inst.truncate = (size, exact, prealloc) => {
      if (size < inst.getLength()) {
        shownLength = size;
        return Promise.resolve();
      }
      shownLength = null;
      return realTruncate(size, exact, prealloc);
    };
  });
  await expectCaught(target, "resize grows and shrinks, and cut-off data stays gone");
});

Deno.test("conformance catches a read-zeroes driver that leaves buffers alone", async () => {
  const target: ConformanceTarget = {
    registry: new DriverRegistry([nullDriver]),
    capabilities: { persistent: false, readsZeroes: true, resize: false, growsOnWrite: false },
    open: (graph) => graph.open({ driver: "null-co", size: 1 << 20 }, CONFORMANCE_HOLDER),
  };
  await expectCaught(target, "a fresh disk reads as zeros");
});

Deno.test("runCase closes the graph even when the case fails", async () => {
  let cleaned = false;
  const target: ConformanceTarget = {
    ...brokenMemory(() => {}),
    cleanup: () => {
      cleaned = true;
      return Promise.resolve();
    },
  };
  const failing: ConformanceCase = {
    name: "always fails",
    run: () => Promise.reject(new AssertionError("boom")),
  };
  let message = "";
  try {
    await runCase(target, failing);
  } catch (e) {
    message = (e as Error).message;
  }
  assertEquals(message, "boom", "the case's error is the one reported");
  assertEquals(cleaned, true, "cleanup ran");
});
