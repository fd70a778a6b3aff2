import { assert, assertEquals } from "../conformance/mod.ts";
import { allocateIoMemory } from "./io_memory.ts";

Deno.test("allocateIoMemory gives aligned native memory of the asked size", () => {
  for (const size of [1, 4096, 12345, 2 << 20, (4 << 20) + 512]) {
    const m = allocateIoMemory(size);
    try {
      assertEquals(m.bytes.length, size);
      assert(m.address !== 0 && m.address % 4096 === 0, `address ${m.address} for ${size}`);
      const addr = Number(Deno.UnsafePointer.value(Deno.UnsafePointer.of(m.bytes)));
      assertEquals(addr, m.address);
      m.bytes.fill(0xa5);
      assertEquals(m.bytes[size - 1], 0xa5);
    } finally {
      m.release();
      m.release();
    }
  }
});

Deno.test("allocateIoMemory puts buffers of 2 MiB and more on huge-page boundaries", () => {
  const m = allocateIoMemory(3 << 20);
  try {
    assertEquals(m.address % (2 << 20), 0);
  } finally {
    m.release();
  }
});

Deno.test("allocateIoMemory honours a larger alignment and refuses bad sizes", () => {
  const m = allocateIoMemory(100, 65536);
  try {
    assertEquals(m.address % 65536, 0);
  } finally {
    m.release();
  }
  let threw = false;
  try {
    allocateIoMemory(-1);
  } catch (e) {
    threw = e instanceof RangeError;
  }
  assert(threw, "a negative size is refused");
});
