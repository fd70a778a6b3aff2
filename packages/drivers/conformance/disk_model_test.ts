import { DiskModel } from "./disk_model.ts";
import { assert, assertBytesEqual, assertEquals } from "./assertions.ts";

Deno.test("DiskModel reads unwritten bytes and bytes past the end as zeros", () => {
  const m = new DiskModel(8);
  m.write(2, new Uint8Array([1, 2]));
  assertBytesEqual(m.read(0, 10), new Uint8Array([0, 0, 1, 2, 0, 0, 0, 0, 0, 0]));
  assert(m.isZero(4, 100), "tail is zero");
  assert(!m.isZero(0, 4), "written bytes are not zero");
});

Deno.test("DiskModel.write past the end grows the disk", () => {
  const m = new DiskModel(4);
  m.write(3, new Uint8Array([9, 9, 9]));
  assertEquals(m.length, 6);
  assertBytesEqual(m.read(2, 4), new Uint8Array([0, 9, 9, 9]));
});

Deno.test("DiskModel.truncate drops data beyond a shrink", () => {
  const m = new DiskModel(4);
  m.write(0, new Uint8Array([1, 2, 3, 4]));
  m.truncate(2);
  assertEquals(m.length, 2);
  m.truncate(4);
  assertBytesEqual(m.read(0, 4), new Uint8Array([1, 2, 0, 0]));
});

Deno.test("DiskModel.zero zeros a range and grows past the end", () => {
  const m = new DiskModel(4);
  m.write(0, new Uint8Array([1, 2, 3, 4]));
  m.zero(1, 5);
  assertEquals(m.length, 6);
  assertBytesEqual(m.read(0, 6), new Uint8Array([1, 0, 0, 0, 0, 0]));
});
