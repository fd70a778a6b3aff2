import { deepStrictEqual as assertEquals } from "node:assert";
import { cvtnum, cvtnumError, strtosz } from "./cvtnum.ts";

const value = (s: string) => cvtnum(s).value;
const error = (s: string) => cvtnum(s).error;

Deno.test("cvtnum reads suffixes, fractions and hexadecimal as qemu_strtosz", () => {
  assertEquals(value("64k"), 65536n);
  assertEquals(value("1.5M"), 1572864n);
  assertEquals(value("0x10"), 16n);
  assertEquals(value("1."), 1n);
  assertEquals(value("1.k"), 1024n);
  assertEquals(value("+5"), 5n);
  assertEquals(value("1b"), 1n);
  assertEquals(value("1.5e"), 1729382256910270464n);
});

Deno.test("cvtnum rounds fractional bytes half up", () => {
  assertEquals(value("0.0005k"), 1n);
  assertEquals(value("1.00048828125k"), 1025n);
  assertEquals(value("1.00048828124k"), 1024n);
  assertEquals(value("1.9999999999999999999k"), 1024n);
});

Deno.test("cvtnum refuses what qemu-io refuses", () => {
  for (
    const s of ["1.5", "1.5b", "x", "1x", "0x", "0x1.5k", "1.e3", "1.5e3k", "-1", ".5k", "1e3"]
  ) {
    assertEquals(error(s), "EINVAL", s);
  }
  for (const s of ["8E", "16E", "9223372036854775808", "99999999999999999999"]) {
    assertEquals(error(s), "ERANGE", s);
  }
  assertEquals(value("9223372036854775807"), 9223372036854775807n);
});

Deno.test("strtosz flags hexadecimal numbers with a suffix", () => {
  assertEquals(strtosz("0x1g"), { value: 1073741824n, hexSuffix: true });
  assertEquals(strtosz("0x1E").value, 30n);
});

Deno.test("cvtnumError words both failures as qemu-io", () => {
  assertEquals(cvtnumError("ERANGE", "8E"), "Parsing error: argument too large -- 8E");
  assertEquals(
    cvtnumError("EINVAL", "x"),
    "Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- x",
  );
});
