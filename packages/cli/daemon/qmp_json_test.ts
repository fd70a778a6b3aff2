import { deepStrictEqual as assertEquals, throws } from "node:assert";
import { formatQmpJson, type JsonParseError, JsonStreamer, parseQmpJson } from "./qmp_json.ts";

Deno.test("formatQmpJson prints as QEMU does: spaces after ':' and ',', nested", () => {
  assertEquals(
    formatQmpJson({ return: [{ a: 1, b: 'x"y' }, [], {}], id: null }),
    '{"return": [{"a": 1, "b": "x\\"y"}, [], {}], "id": null}',
  );
  assertEquals(formatQmpJson({ skip: undefined, t: true }), '{"t": true}');
});

Deno.test("JsonStreamer splits values across chunks and lines, errors do not stop it", () => {
  const s = new JsonStreamer();
  assertEquals(s.feed('{"a": [1, {"b'), []);
  assertEquals(s.feed('": 2}]}{"c": \'d\'} x'), [{ a: [1, { b: 2 }] }, { c: "d" }]);
  const out = s.feed('yz 3 -1.5e2 "\\u0041"\n');
  assertEquals(out.length, 4);
  assertEquals((out[0] as JsonParseError).message, "JSON parse error, invalid keyword 'xyz'");
  assertEquals(out.slice(1), [3, -150, "A"]);
});

Deno.test("parseQmpJson parses one text and reports incomplete input in QEMU's words", () => {
  assertEquals(parseQmpJson('{"driver": "raw", "file": {"driver": "null-co"}}'), {
    driver: "raw",
    file: { driver: "null-co" },
  });
  throws(() => parseQmpJson("{bad"), /^JsonParseError: JSON parse error, invalid keyword 'bad'$/);
  throws(() => parseQmpJson('{"a": 1'), /JSON parse error, premature EOI/);
  throws(() => parseQmpJson('{"a": "\\u12"}'), /invalid hex escape sequence in string/);
});
