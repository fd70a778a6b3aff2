import { deepStrictEqual as assertEquals } from "node:assert";
import { Graph } from "@blockgraph/core";
import { defaultRegistry } from "@blockgraph/drivers";
import { captureIo } from "../common/cli_io.ts";
import {
  accumulateOptions,
  amendOptionsHelp,
  createOptionsHelp,
  hasHelpOption,
  isValidOptionList,
} from "./img_options.ts";

Deno.test("isValidOptionList refuses lists that cannot be joined with a comma", () => {
  assertEquals(
    ["a=1", "", ",a=1", "a=1,", "a=1,,", "a=1,,,", "a=b,,c"].map(isValidOptionList),
    [true, false, false, false, true, false, true],
  );
});

Deno.test("accumulateOptions joins -o lists and prints qemu-img's message for a bad one", () => {
  const io = captureIo();
  assertEquals(accumulateOptions(io, "a=1", "b=2"), "a=1,b=2");
  assertEquals(accumulateOptions(io, undefined, ",x"), null);
  assertEquals(io.stderr, "qemu-img: Invalid option list: ,x\n");
});

Deno.test("hasHelpOption finds a bare help or ? element, not help=value or an escaped comma", () => {
  assertEquals(
    ["help", "?", "a=1,help", "help,a=1", "help=1", "a=x,,help", "a=1,?,b=2"].map(hasHelpOption),
    [true, true, true, true, false, false, true],
  );
});

Deno.test("createOptionsHelp lists raw's options as qemu-img 7.2 does, with the file's when named", () => {
  const graph = new Graph({ registry: defaultRegistry() });
  const io = captureIo();
  assertEquals(createOptionsHelp(graph, io, "raw", undefined), 0);
  assertEquals(
    io.stdout,
    "Supported raw options:\n" +
      "  size=<size>            - Virtual disk size\n\n" +
      "The protocol level may support further options.\n" +
      "Specify the target filename to include those options.\n",
  );
  const named = captureIo();
  assertEquals(createOptionsHelp(graph, named, "raw", "x.raw"), 0);
  assertEquals(
    named.stdout,
    "Supported options:\n" +
      "  extent_size_hint=<size> - Extent size hint for the image file, 0 to disable\n" +
      "  nocow=<bool (on/off)>  - Turn off copy-on-write (valid only on btrfs)\n" +
      "  preallocation=<str>    - Preallocation mode (allowed values: off, falloc, full)\n" +
      "  size=<size>            - Virtual disk size\n",
  );
  const bad = captureIo();
  assertEquals(createOptionsHelp(graph, bad, "vmdk", undefined), 1);
  assertEquals(bad.stderr, "qemu-img: Unknown file format 'vmdk'\n");
  const noCreate = captureIo();
  assertEquals(createOptionsHelp(graph, noCreate, "null-co", undefined), 1);
  assertEquals(
    noCreate.stderr,
    "qemu-img: Format driver 'null-co' does not support image creation\n",
  );
});

Deno.test("amendOptionsHelp lists qcow2's amend options and refuses raw", () => {
  const graph = new Graph({ registry: defaultRegistry() });
  const io = captureIo();
  assertEquals(amendOptionsHelp(graph, io, "qcow2"), 0);
  const lines = io.stdout.split("\n");
  assertEquals(lines[0], "Amend options for 'qcow2':");
  assertEquals(lines.map((l) => l.trim().split("=")[0]).slice(1, -1), [
    "backing_file",
    "backing_fmt",
    "compat",
    "data_file",
    "data_file_raw",
    "encrypt.iter-time",
    "encrypt.keyslot",
    "encrypt.new-secret",
    "encrypt.old-secret",
    "encrypt.state",
    "lazy_refcounts",
    "refcount_bits",
    "size",
  ]);
  const raw = captureIo();
  assertEquals(amendOptionsHelp(graph, raw, "raw"), 1);
  assertEquals(raw.stderr, "qemu-img: Format driver 'raw' does not support option amendment\n");
});
