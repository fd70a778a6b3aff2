/**
 * Number and buffer formatting exactly as QEMU's tools print: qemu-io's `cvtstr` ("1.500
 * KiB"), QEMU's `size_to_str` ("1.5 KiB"), C's `%g`, qemu-io's hex dump and its timing line.
 *
 * @module
 */

const UNITS: [number, string][] = [
  [2 ** 60, " EiB"],
  [2 ** 50, " PiB"],
  [2 ** 40, " TiB"],
  [2 ** 30, " GiB"],
  [2 ** 20, " MiB"],
  [2 ** 10, " KiB"],
];

/** C's `%.Nf`, rounding ties to even on the exact binary value as glibc does. */
export function fixed(value: number, digits: number): string {
  const text = value.toFixed(digits);
  // toFixed rounds exact ties away from zero; glibc rounds them to even.
  const scaled = value * 10 ** digits;
  if (Number.isFinite(scaled) && Math.abs(scaled) < 2 ** 52 && scaled % 1 === 0.5) {
    const down = (Math.floor(scaled) / 10 ** digits).toFixed(digits);
    return Math.floor(scaled) % 2 === 0 ? down : text;
  }
  return text;
}

/**
 * qemu-io's `cvtstr`: three decimals in the largest binary unit, `.000` dropped; below 1 KiB
 * six decimals and "bytes".
 *
 * @example
 * ```ts
 * import { cvtstr } from "./format.ts";
 * console.assert(cvtstr(1536) === "1.500 KiB");
 * console.assert(cvtstr(65536) === "64 KiB");
 * console.assert(cvtstr(512) === "512 bytes");
 * ```
 */
export function cvtstr(value: number): string {
  let text: string;
  let suffix: string;
  const unit = UNITS.find(([size]) => value >= size);
  if (unit) {
    text = fixed(value / unit[0], 3);
    suffix = unit[1];
  } else {
    text = fixed(value, 6);
    suffix = " bytes";
  }
  const trim = text.indexOf(".000");
  return trim >= 0 ? text.slice(0, trim) + suffix : text + suffix;
}

/** C's `%.3g`. */
export function g3(value: number): string {
  if (value === 0) return "0";
  const [mant, expText] = value.toExponential(2).split("e") as [string, string];
  const exp = Number(expText);
  const strip = (s: string) => s.includes(".") ? s.replace(/0+$/, "").replace(/\.$/, "") : s;
  if (exp < -4 || exp >= 3) {
    const sign = exp < 0 ? "-" : "+";
    return `${strip(mant)}e${sign}${String(Math.abs(exp)).padStart(2, "0")}`;
  }
  return strip(fixed(value, 2 - exp));
}

const SIZE_SUFFIXES = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];

/**
 * QEMU's `size_to_str`: three significant digits in a binary unit that keeps the number
 * below 1000 ("1.5 KiB", "0 B").
 */
export function sizeToStr(value: number): string {
  const scaled = value / (1000 / 1024);
  // frexp's exponent: scaled = m * 2^e with 0.5 <= m < 1.
  const e = scaled === 0 ? 0 : Math.floor(Math.log2(scaled)) + 1;
  const i = Math.trunc((e - 1) / 10);
  return `${g3(value / 2 ** (i * 10))} ${SIZE_SUFFIXES[i]}B`;
}

function isAlnum(b: number): boolean {
  return (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5a) || (b >= 0x61 && b <= 0x7a);
}

const HEX_DIGITS = new TextEncoder().encode("0123456789abcdef");
const LATIN1 = new TextDecoder("latin1");

/**
 * qemu-io's `-v` dump: offset, sixteen hex bytes, two spaces of gap, the printable ones.
 * Built as bytes and decoded once: a 1 MiB dump took 250 ms as string concatenation (qemu-io:
 * 60 ms for the whole command).
 */
export function dumpBuffer(buf: Uint8Array, offset: number): string {
  // Each row: an offset of up to 16 digits, ": ", 16 x "xx ", " ", 16 characters, "\n".
  const out = new Uint8Array(Math.ceil(buf.length / 16) * 86);
  let p = 0;
  for (let i = 0; i < buf.length; i += 16) {
    const at = (offset + i).toString(16).padStart(8, "0");
    for (let k = 0; k < at.length; k++) out[p++] = at.charCodeAt(k);
    out[p++] = 0x3a;
    out[p++] = 0x20;
    out[p++] = 0x20;
    const end = Math.min(i + 16, buf.length);
    for (let j = i; j < end; j++) {
      const b = buf[j]!;
      out[p++] = HEX_DIGITS[b >> 4]!;
      out[p++] = HEX_DIGITS[b & 15]!;
      out[p++] = 0x20;
    }
    out[p++] = 0x20;
    for (let j = i; j < end; j++) out[p++] = isAlnum(buf[j]!) ? buf[j]! : 0x2e;
    out[p++] = 0x0a;
  }
  return LATIN1.decode(out.subarray(0, p));
}

/** qemu-io's elapsed-time text: `00.12 sec`, or `H:MM:SS.CC` (always so with `-C`). */
export function timestr(seconds: number, verbose: boolean): string {
  const usec = Math.round(seconds * 1e6);
  const whole = Math.floor(usec / 1e6);
  const centis = Math.floor((usec % 1e6) / 1e4);
  const cc = String(centis).padStart(2, "0");
  if (!verbose && whole === 0) return `00.${cc} sec`;
  const h = Math.floor(whole / 3600);
  const m = String(Math.floor((whole % 3600) / 60)).padStart(2, "0");
  const s = String(whole % 60).padStart(2, "0");
  return `${h}:${m}:${s}.${cc}`;
}

/**
 * qemu-io's `print_report`: "wrote N/N bytes at offset O" and the rate line, or with `-C` one
 * comma-separated line.
 */
export function report(
  op: string,
  seconds: number,
  offset: number,
  count: number,
  total: number,
  ops: number,
  machine: boolean,
): string {
  const t = Math.max(seconds, 1e-6);
  const ts = timestr(seconds, machine);
  if (machine) {
    return `${total},${ops},${ts},${fixed(total / t, 3)},${fixed(ops / t, 3)}\n`;
  }
  return `${op} ${total}/${count} bytes at offset ${offset}\n` +
    `${cvtstr(total)}, ${ops} ops; ${ts} (${cvtstr(total / t)}/sec and ${
      fixed(ops / t, 4)
    } ops/sec)\n`;
}
