import { deepStrictEqual as assertEquals, throws } from "node:assert";
import { BlockError } from "./errors.ts";
import {
  JsonStreamer,
  parseQemuJson,
  qemuJson,
  qemuJsonNumber,
  qemuJsonString,
} from "./qemu_json.ts";

/** The message parseQemuJson throws for `text`. */
function error(text: string): string {
  try {
    parseQemuJson(text);
  } catch (e) {
    if (e instanceof BlockError) return e.message;
    throw e;
  }
  throw new Error(`${text} parsed`);
}

Deno.test("parseQemuJson reads JSON with QEMU's single-quoted strings and escapes", () => {
  assertEquals(parseQemuJson(` {"a": [1, -2.5e1, true, false, null], 'b': 'x"y\\'z'}\n`), {
    a: [1, -25, true, false, null],
    b: "x\"y'z",
  });
  assertEquals(parseQemuJson('"\\u00e9\\/\\ud83d\\ude00"'), "é/😀");
  assertEquals(parseQemuJson("{}"), {});
});

Deno.test("parseQemuJson fails in qemu-img 7.2's words", () => {
  const cases: [string, string][] = [
    ["", "Expecting a JSON value"],
    [" \t", "Expecting a JSON value"],
    ["{", "JSON parse error, premature EOI"],
    ["[1", "JSON parse error, premature EOI"],
    ['{"a"}', "JSON parse error, missing : in object pair"],
    ['{"a":}', "JSON parse error, expecting value"],
    ['{"a":1,}', "JSON parse error, expecting value"],
    ["{a:1}", "JSON parse error, invalid keyword 'a'"],
    ["{1:2}", "JSON parse error, key is not a string in object"],
    ['{"a":1 "b":2}', "JSON parse error, expected separator in dict"],
    ["[1 2]", "JSON parse error, expected separator in list"],
    ['{"a":1,"a":2}', "JSON parse error, duplicate key"],
    ["}", "JSON parse error, expecting value"],
    ['{"a":1} x', "Expecting at most one JSON value"],
    ['{"a":1}{}', "Expecting at most one JSON value"],
    ['{"a":1}}', "Expecting at most one JSON value"],
    ["%", "JSON parse error, stray '%'"],
    ['{"a":%}', "JSON parse error, stray '%'"],
    ["@ {}", "JSON parse error, stray '@'"],
    ['"x', "JSON parse error, stray '\"x'"],
    ['{"a":01}', "JSON parse error, stray '01'"],
    ['{"a":0x10}', "JSON parse error, expected separator in dict"],
    ['{"a":-}', "JSON parse error, stray '-}'"],
    ['{"a":1.}', "JSON parse error, stray '1.}'"],
    ['{"a":1.e5}', "JSON parse error, stray '1.e'"],
    ['{"a":+1}', "JSON parse error, stray '+'"],
    ['{"a":tRue}', "JSON parse error, stray 'R'"],
    ['{"a":"x\ty"}', "JSON parse error, stray '\"x\t'"],
    ['{"a":"\\q"}', "JSON parse error, invalid escape sequence in string"],
    ['{"a":"\\u12"}', 'JSON parse error, \\u12" is not a valid Unicode character'],
    ['{"a":"\\u12G4"}', "JSON parse error, \\u12G4 is not a valid Unicode character"],
    ['{"a":"\\uD800\\u0041"}', "JSON parse error, \\uD800 is not a valid Unicode character"],
    ['{"a":"\\uFFFE"}', "JSON parse error, \\uFFFE is not a valid Unicode character"],
  ];
  for (const [text, message] of cases) assertEquals(error(text), message, text);
});

Deno.test("JsonStreamer gives each value as it completes, and recovers after an error", () => {
  const s = new JsonStreamer();
  assertEquals(s.feed('{"a": [1, {"b'), []);
  assertEquals(s.feed('": 2}]}{"c": \'d\'} x'), [{ a: [1, { b: 2 }] }, { c: "d" }]);
  const out = s.feed('yz 3 -1.5e2 "\\u0041"\n@@@ {"e": 1}\n');
  assertEquals(out.map((v) => v instanceof BlockError ? v.message : v), [
    "JSON parse error, invalid keyword 'xyz'",
    3,
    -150,
    "A",
    "JSON parse error, stray '@'",
    { e: 1 },
  ]);
  assertEquals(s.feed("[1, "), []);
  assertEquals(
    s.flush().map((v) => (v as BlockError).message),
    ["JSON parse error, premature EOI"],
  );
});

Deno.test("parseQemuJson refuses nesting deeper than QEMU's 1024", () => {
  throws(() => parseQemuJson("[".repeat(1025)), /JSON nesting depth limit exceeded/);
});

Deno.test("qemuJsonString escapes as QEMU's JSON writer: names, then \\uXXXX", () => {
  assertEquals(qemuJsonString('a"b\\c/d'), '"a\\"b\\\\c/d"');
  assertEquals(qemuJsonString("\b\f\n\r\t\x01\x7f"), '"\\b\\f\\n\\r\\t\\u0001\\u007F"');
  assertEquals(qemuJsonString("é😀"), '"\\u00E9\\uD83D\\uDE00"');
});

Deno.test("qemuJsonNumber prints integers whole and the rest as %.17g", () => {
  assertEquals(qemuJsonNumber(1048576), "1048576");
  assertEquals(qemuJsonNumber(-0), "0");
  assertEquals(qemuJsonNumber(1.5), "1.5");
  assertEquals(qemuJsonNumber(0.1), "0.10000000000000001");
  assertEquals(qemuJsonNumber(1e-5), "1.0000000000000001e-05");
  assertEquals(qemuJsonNumber(1.5e300), "1.5000000000000001e+300");
});

Deno.test("qemuJson writes one line with dictionary keys in QDict order", () => {
  assertEquals(
    qemuJson({ driver: "raw", offset: "512", file: { driver: "file", filename: "a" } }),
    '{"offset": "512", "driver": "raw", "file": {"driver": "file", "filename": "a"}}',
  );
  assertEquals(
    qemuJson({ a: [], b: {}, c: [1, null, true] }),
    '{"a": [], "b": {}, "c": [1, null, true]}',
  );
});
