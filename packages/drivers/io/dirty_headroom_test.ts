import assert from "node:assert/strict";
import {
  type DirtyFigures,
  DirtyHeadroom,
  freerunBytes,
  hasHeadroom,
  HEADROOM_SHARE,
  REFRESH_MS,
} from "./dirty_headroom.ts";

const GIB = 2 ** 30;

function figures(over: Partial<DirtyFigures>): DirtyFigures {
  return {
    dirtyable: 20 * GIB,
    dirty: 0,
    ratio: 20,
    bytes: 0,
    bgRatio: 10,
    bgBytes: 0,
    ...over,
  };
}

Deno.test("freerun is the mean of the dirty limit and the background level", () => {
  // 20% and 10% of 20 GiB: 4 GiB and 2 GiB, mean 3 GiB.
  assert.equal(freerunBytes(figures({})), 3 * GIB);
  // The _bytes settings win over the ratios.
  assert.equal(freerunBytes(figures({ bytes: 1 * GIB, bgBytes: GIB / 2 })), 0.75 * GIB);
  // A background level at or above the limit counts as half of it (the kernel's rule).
  assert.equal(freerunBytes(figures({ ratio: 10, bgRatio: 30 })), 1.5 * GIB);
});

Deno.test("headroom holds while dirty memory is below its share of freerun", () => {
  const limit = 3 * GIB * HEADROOM_SHARE;
  assert.equal(hasHeadroom(figures({ dirty: limit - 4096 })), true);
  assert.equal(hasHeadroom(figures({ dirty: limit })), false);
  // Little dirtyable memory (a host short of memory) leaves none even for small dirt.
  assert.equal(hasHeadroom(figures({ dirtyable: 64 << 20, dirty: 8 << 20 })), false);
});

Deno.test("the host's figures read and answer, refreshed at most every REFRESH_MS", () => {
  const h = new DirtyHeadroom();
  const first = h.ok(1000);
  assert.equal(typeof first, "boolean");
  // Inside the refresh window the answer is the cached one.
  assert.equal(h.ok(1000 + REFRESH_MS / 2), first);
  // This test machine has a few GiB free and writes little: there is headroom.
  assert.equal(h.ok(1000 + REFRESH_MS * 2), true);
});
