import { BlockError } from "@blockgraph/core";
import {
  assert,
  assertBytesEqual,
  assertEquals,
  AssertionError,
  assertRejectsWith,
} from "./assertions.ts";

function messageOf(fn: () => void): string {
  try {
    fn();
  } catch (e) {
    if (e instanceof AssertionError) return e.message;
    throw e;
  }
  throw new Error("the assertion held");
}

async function asyncMessageOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (e) {
    if (e instanceof AssertionError) return e.message;
    throw e;
  }
  throw new Error("the assertion held");
}

Deno.test("assert and assertEquals throw with the message given", () => {
  assert(true, "holds");
  assertEquals(messageOf(() => assert(false, "nope")), "nope");
  assertEquals(messageOf(() => assertEquals(1, 2, "count")), "count: expected 2, got 1");
});

Deno.test("assertBytesEqual names the first differing offset", () => {
  assertBytesEqual(new Uint8Array([1, 2]), new Uint8Array([1, 2]));
  assertEquals(
    messageOf(() =>
      assertBytesEqual(new Uint8Array([1, 2, 3]), new Uint8Array([1, 9, 3]), "r", 100)
    ),
    "r: first difference at offset 101: expected 9, got 2",
  );
  assertEquals(
    messageOf(() => assertBytesEqual(new Uint8Array(1), new Uint8Array(2), "r")),
    "r: expected 2 bytes, got 1",
  );
});

Deno.test("assertRejectsWith checks the BlockError code", async () => {
  const e = await assertRejectsWith(Promise.reject(new BlockError("EPERM")), "EPERM", "w");
  assertEquals(e.code, "EPERM");
  assertEquals(
    await asyncMessageOf(assertRejectsWith(Promise.resolve(), "EIO", "read")),
    "read: expected EIO, it succeeded",
  );
  assertEquals(
    await asyncMessageOf(
      assertRejectsWith(Promise.reject(new BlockError("EIO", "x")), "EPERM", "w"),
    ),
    "w: expected EPERM, got EIO (x)",
  );
  assertEquals(
    await asyncMessageOf(assertRejectsWith(Promise.reject(new Error("plain")), "EIO", "w")),
    "w: expected a BlockError EIO, got Error: plain",
  );
});
