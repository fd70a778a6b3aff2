import { deepStrictEqual as assertEquals } from "node:assert";
import { cvtstr, dumpBuffer, g3, report, sizeToStr, timestr } from "./format.ts";

Deno.test("cvtstr prints qemu-io's units", () => {
  assertEquals(cvtstr(0), "0 bytes");
  assertEquals(cvtstr(512), "512 bytes");
  assertEquals(cvtstr(1536), "1.500 KiB");
  assertEquals(cvtstr(1048576), "1 MiB");
  assertEquals(cvtstr(2147483136), "2 GiB");
  assertEquals(cvtstr(123.945595), "123.945595 bytes");
});

Deno.test("sizeToStr prints size_to_str's three significant digits", () => {
  assertEquals(sizeToStr(0), "0 B");
  assertEquals(sizeToStr(1536), "1.5 KiB");
  assertEquals(sizeToStr(4096), "4 KiB");
  assertEquals(sizeToStr(1099511627776), "1 TiB");
  assertEquals(sizeToStr(1000), "0.977 KiB");
  assertEquals(g3(0.0001234), "0.000123");
  assertEquals(g3(1234), "1.23e+03");
});

Deno.test("dumpBuffer prints qemu-io's -v rows", () => {
  const buf = new Uint8Array(20).fill(0xab);
  buf.set([0x41, 0x7a, 0x30], 0);
  assertEquals(
    dumpBuffer(buf, 0x10),
    "00000010:  41 7a 30 ab ab ab ab ab ab ab ab ab ab ab ab ab  Az0.............\n" +
      "00000020:  ab ab ab ab  ....\n",
  );
});

Deno.test("report prints the two lines, or one with -C", () => {
  const text = report("wrote", 0.5, 0, 65536, 65536, 1, false);
  assertEquals(
    text,
    "wrote 65536/65536 bytes at offset 0\n64 KiB, 1 ops; 00.50 sec (128 KiB/sec and 2.0000 ops/sec)\n",
  );
  assertEquals(report("read", 0.5, 0, 512, 512, 1, true), "512,1,0:00:00.50,1024.000,2.000\n");
  assertEquals(timestr(819.66, false), "0:13:39.66");
});
