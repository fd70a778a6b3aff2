import { deepStrictEqual as assertEquals, ok as assert } from "node:assert";
import { IoVector, isZeroBuffer, nativeCompareReady, sameBytes, sameBytesAt } from "./io_vector.ts";

Deno.test("isZeroBuffer finds one non-zero byte anywhere in any range of any view", () => {
  const backing = new Uint8Array(96);
  // Views that start on each byte of a word, so the word loop meets every misalignment.
  for (let start = 0; start < 4; start++) {
    const view = backing.subarray(start, start + 80);
    for (let pos = 0; pos < view.length; pos++) {
      view[pos] = 0x80;
      for (const [offset, length] of [[0, 80], [1, 70], [3, 9], [pos, 1], [pos + 1, 79 - pos]]) {
        const want = !(offset! <= pos && pos < offset! + length!);
        assertEquals(
          isZeroBuffer(view, offset, length),
          want,
          `byte ${pos} of a view at ${start}, range ${offset}+${length}`,
        );
      }
      view[pos] = 0;
    }
  }
  assert(isZeroBuffer(backing), "all zero again");
  assert(isZeroBuffer(backing, 10, 0), "an empty range is zero");
});

Deno.test("sameBytes and sameBytesAt find one differing byte, short or long, aligned or not", async () => {
  // Long ranges in the loops until node:buffer has loaded, then natively.
  checkSameBytes();
  await nativeCompareReady();
  checkSameBytes();
});

function checkSameBytes(): void {
  // Lengths on both sides of the native threshold; offsets aligned (words) and not (bytes).
  for (const length of [0, 1, 92, 512, 2047, 2048, 5000]) {
    for (const [da, db] of [[0, 4], [1, 7], [8, 8]] as const) {
      const one = new Uint8Array(length + 16).map((_, i) => i * 7);
      const two = new Uint8Array(length + 16);
      two.set(one.subarray(da, da + length), db);
      const label = `${length} bytes at ${da} and ${db}`;
      assert(sameBytesAt(one, da, two, db, length), `${label}: same`);
      assert(sameBytes(one.subarray(da, da + length), two.subarray(db, db + length)), label);
      for (const pos of new Set([0, 1, length >> 1, length - 2, length - 1])) {
        if (pos < 0 || pos >= length) continue;
        two[db + pos]! ^= 1;
        assert(!sameBytesAt(one, da, two, db, length), `${label}: byte ${pos} differs`);
        two[db + pos]! ^= 1;
      }
      if (length > 0) {
        assert(!sameBytes(one.subarray(da, da + length), two.subarray(db, db + length - 1)), label);
      }
    }
  }
}

Deno.test("isZeroBuffer sees a buffer grown after it was first scanned", () => {
  const buffer = new ArrayBuffer(64, { maxByteLength: 256 });
  const bytes = new Uint8Array(buffer);
  assert(isZeroBuffer(bytes), "zero at 64 bytes");
  buffer.resize(256);
  bytes[200] = 1;
  assert(!isZeroBuffer(bytes), "the byte past the first length is seen");
  assert(isZeroBuffer(bytes, 0, 200), "and the range before it is zero");
});

Deno.test("IoVector.isZero spans segments", () => {
  const q = new IoVector([new Uint8Array(5), new Uint8Array(7), new Uint8Array(9)]);
  assert(q.isZero(0, 21));
  q.iov[1]![6] = 2;
  assert(!q.isZero(0, 21), "the last byte of the middle segment");
  assert(q.isZero(0, 11) && q.isZero(12, 9), "the ranges around it");
});
