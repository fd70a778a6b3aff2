import { deepStrictEqual as assertEquals } from "node:assert";
import { getopt, glibcMessage } from "./getopt.ts";

Deno.test("getopt permutes operands after options, as GNU getopt does", () => {
  const r = getopt(["0", "512", "-qP", "0xab"], "qP:");
  assertEquals(r.operands, ["0", "512"]);
  assertEquals(r.options, [{ key: "q", value: undefined }, { key: "P", value: "0xab" }]);
});

Deno.test("getopt stops at -- and at the first operand with +", () => {
  assertEquals(getopt(["--", "-q", "1"], "q").operands, ["-q", "1"]);
  assertEquals(getopt(["info", "-q"], "+q").operands, ["info", "-q"]);
});

Deno.test("getopt reports invalid and missing options with glibc's words", () => {
  const bad = getopt(["-x"], "q");
  assertEquals(glibcMessage("read", bad.error!), "read: invalid option -- 'x'");
  const missing = getopt(["-P"], "P:");
  assertEquals(glibcMessage("read", missing.error!), "read: option requires an argument -- 'P'");
});

Deno.test("getopt matches unique long-option prefixes and reports ambiguity", () => {
  const longs = [
    { name: "cmd", arg: "required" as const, key: "c" },
    { name: "copy-on-read", arg: "none" as const, key: "C" },
    { name: "format", arg: "required" as const, key: "f" },
  ];
  assertEquals(getopt(["--form=raw"], "", longs).options, [{ key: "f", value: "raw" }]);
  const amb = getopt(["--c", "x"], "", longs);
  assertEquals(
    glibcMessage("qemu-io", amb.error!),
    "qemu-io: option '--c' is ambiguous; possibilities: '--cmd' '--copy-on-read'",
  );
});
