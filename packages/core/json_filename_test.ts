import { deepStrictEqual as assertEquals, throws } from "node:assert";
import {
  flattenOptions,
  isJsonFilename,
  mergeJsonFilename,
  parseJsonFilename,
} from "./json_filename.ts";

Deno.test("isJsonFilename answers to the lower-case json: prefix only", () => {
  assertEquals(isJsonFilename('json:{"driver": "null-co"}'), true);
  assertEquals(isJsonFilename("json:"), true);
  assertEquals(isJsonFilename('JSON:{"driver": "null-co"}'), false);
  assertEquals(isJsonFilename("a/json:x"), false);
});

Deno.test("parseJsonFilename gives nested options, dotted keys and nested objects alike", () => {
  const nested = {
    driver: "qcow2",
    file: { driver: "file", filename: "a.qcow2" },
  };
  assertEquals(
    parseJsonFilename('json:{"driver":"qcow2","file":{"driver":"file","filename":"a.qcow2"}}'),
    nested,
  );
  assertEquals(
    parseJsonFilename('json:{"driver":"qcow2","file.driver":"file","file.filename":"a.qcow2"}'),
    nested,
  );
  assertEquals(parseJsonFilename("json:{'driver': 'null-co', 'size': 1048576}"), {
    driver: "null-co",
    size: 1048576,
  });
  assertEquals(parseJsonFilename('json:{"a": [1, 2], "b": {}, "c": []}'), {
    a: [1, 2],
    b: {},
    c: [],
  });
});

Deno.test("parseJsonFilename fails as qemu-img's parse_json_filename does", () => {
  const cases: [string, string][] = [
    ["json:{", "Could not parse the JSON options: JSON parse error, premature EOI"],
    ["json:", "Could not parse the JSON options: Expecting a JSON value"],
    ['json:{"a":1}}', "Could not parse the JSON options: Expecting at most one JSON value"],
    ["json:[]", "Invalid JSON object given"],
    ['json:"x"', "Invalid JSON object given"],
    ["json:null", "Invalid JSON object given"],
  ];
  for (const [name, message] of cases) {
    throws(() => parseJsonFilename(name), (e: Error) => e.message === message, name);
  }
});

Deno.test("mergeJsonFilename lets the options given otherwise win, member by member", () => {
  const name = 'json:{"driver": "qcow2", "read-only": false, "file": {"driver": "file", ' +
    '"filename": "a.qcow2", "aio": "native"}}';
  assertEquals(mergeJsonFilename({ driver: "raw", file: { aio: "threads" } }, name), {
    driver: "raw",
    file: { aio: "threads", driver: "file", filename: "a.qcow2" },
    "read-only": false,
  });
  assertEquals(mergeJsonFilename({}, 'json:{"driver": "null-co"}'), { driver: "null-co" });
});

Deno.test("flattenOptions spells nested options as dotted keys, keeping empty ones", () => {
  assertEquals(
    flattenOptions({ server: { type: "unix", path: "/s" }, a: {}, l: [1, { x: 2 }], n: null }),
    { a: {}, n: null, "server.type": "unix", "server.path": "/s", "l.0": 1, "l.1.x": 2 },
  );
});
