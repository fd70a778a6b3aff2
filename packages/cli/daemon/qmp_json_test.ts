import { deepStrictEqual as assertEquals } from "node:assert";
import { formatQmpJson } from "./qmp_json.ts";

Deno.test("formatQmpJson prints as QEMU does: spaces after ':' and ',', nested", () => {
  assertEquals(
    formatQmpJson({ return: [{ a: 1, b: 'x"y' }, [], {}], id: null }),
    '{"return": [{"a": 1, "b": "x\\"y"}, [], {}], "id": null}',
  );
  assertEquals(formatQmpJson({ skip: undefined, t: true }), '{"t": true}');
});

Deno.test("formatQmpJson quotes strings as QEMU does: non-ASCII as \\uXXXX", () => {
  assertEquals(formatQmpJson({ desc: "é\t😀" }), '{"desc": "\\u00E9\\t\\uD83D\\uDE00"}');
});
