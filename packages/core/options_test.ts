import { deepStrictEqual as assertEquals } from "node:assert";
import {
  flatten,
  keyValueItems,
  parseKeyValue,
  parseSize,
  unflatten,
  validateOptions,
} from "./options.ts";
import { BlockError } from "./errors.ts";
import { assertThrows } from "./test_util.ts";

Deno.test("parseSize takes QEMU's suffixes and refuses what it cannot represent", () => {
  assertEquals(parseSize("512"), 512);
  assertEquals(parseSize("64k"), 65536);
  assertEquals(parseSize("1.5G"), 1.5 * 2 ** 30);
  assertEquals(parseSize("0x1000"), 4096);
  assertEquals(parseSize("1.5"), undefined);
  assertEquals(parseSize("9007199254740993"), undefined);
  assertEquals(parseSize("0xffffffffffffffffff"), undefined);
  assertEquals(parseSize("-1"), undefined);
  assertEquals(parseSize("12q"), undefined);
});

Deno.test("parseKeyValue splits key=value lists with ,, escapes; unflatten nests dotted keys", () => {
  const kv = parseKeyValue("driver=raw,file.filename=a,,b,toString=1");
  assertEquals(kv, { driver: "raw", "file.filename": "a,b", toString: "1" });
  assertEquals(unflatten(kv), { driver: "raw", file: { filename: "a,b" }, toString: "1" });
  assertEquals(parseKeyValue("qcow2,size=1", "driver"), { driver: "qcow2", size: "1" });
  assertThrows(() => parseKeyValue("a=1,a=2"), BlockError, "Parameter 'a' is duplicated");
  assertEquals(unflatten({ "children.0.file": "x", "children.1.file": "y" }), {
    children: [{ file: "x" }, { file: "y" }],
  });
  assertEquals(flatten({ file: { filename: "x" }, driver: "raw" }), {
    "file.filename": "x",
    driver: "raw",
  });
});

Deno.test("validateOptions spells nested objects as the dotted options a schema declares", () => {
  const schema = {
    "server.type": { type: "enum", values: ["inet", "unix"], description: "t" },
    "server.port": { type: "string", description: "p" },
  } as const;
  const got = validateOptions(schema, { server: { type: "unix", port: 10809 } }, "x");
  assertEquals(got, { "server.type": "unix", "server.port": "10809" });
  assertThrows(
    () => validateOptions(schema, { server: { bogus: 1 } }, "x"),
    BlockError,
    "server.bogus",
  );
});

Deno.test("keyValueItems splits items in order, with ',,' as a comma and bare words valueless", () => {
  assertEquals(keyValueItems("secret,id=s0,data=a,,b,help,,k=v"), [
    { key: "secret", value: null },
    { key: "id", value: "s0" },
    { key: "data", value: "a,b" },
    { key: "help", value: null },
    { key: "", value: null },
    { key: "k", value: "v" },
  ]);
});
