/**
 * Sizes and offsets as QEMU 7.2's `qemu_strtosz` reads them (qemu-io's `cvtnum`): a decimal
 * or `0x` hexadecimal integer, an optional decimal fraction, an optional binary suffix
 * (`b k M G T P E`, any case). A fraction needs a suffix other than `b`; results are rounded
 * to the nearest byte, halves up.
 *
 * @module
 */

/** The errno-style outcome of a failed parse. */
export type SizeError = "EINVAL" | "ERANGE";

/** The result of {@link strtosz}. */
export interface SizeResult {
  /** The value in bytes, when the parse succeeded. */
  readonly value?: bigint;
  /** Why the parse failed. */
  readonly error?: SizeError;
  /** Whether a hexadecimal number carried a suffix (QEMU warns that this is deprecated). */
  readonly hexSuffix: boolean;
}

const TWO64 = 1n << 64n;
const INT64_MAX = (1n << 63n) - 1n;
const SUFFIX_SHIFT: Record<string, bigint> = {
  B: 0n,
  K: 10n,
  M: 20n,
  G: 30n,
  T: 40n,
  P: 50n,
  E: 60n,
};

function isSpace(c: string | undefined): boolean {
  return c === " " || c === "\t" || c === "\n" || c === "\v" || c === "\f" || c === "\r";
}

/** strtoull over `s` from `start`: where the number ends, its value, and whether it overflowed. */
function strtoull(
  s: string,
  start: number,
  base: 10 | 16,
): { end: number; value: bigint; overflow: boolean; negative: boolean } {
  let i = start;
  while (isSpace(s[i])) i++;
  let negative = false;
  if (s[i] === "+" || s[i] === "-") negative = s[i++] === "-";
  if (base === 16 && s[i] === "0" && (s[i + 1] === "x" || s[i + 1] === "X")) {
    if (/[0-9a-fA-F]/.test(s[i + 2] ?? "")) i += 2;
  }
  const digits = base === 10 ? /[0-9]/ : /[0-9a-fA-F]/;
  const from = i;
  while (i < s.length && digits.test(s[i]!)) i++;
  if (i === from) return { end: start, value: 0n, overflow: false, negative: false };
  const text = s.slice(from, i);
  let value = BigInt(base === 10 ? text : `0x${text}`);
  const overflow = value >= TWO64;
  if (negative && !overflow) value = (TWO64 - value) % TWO64;
  return { end: i, value, overflow, negative };
}

/** Reads a decimal fraction at `s[start] === "."` as strtod would, refusing exponents. */
function fraction(s: string, start: number): { end: number; value: number } | "exponent" | null {
  const m = /^\.(\d*)([eE][+-]?\d+)?/.exec(s.slice(start));
  if (!m || (m[1] === "" && m[2] === undefined)) return null;
  if (m[1] === "") return null;
  if (m[2] !== undefined) return "exponent";
  return { end: start + 1 + m[1]!.length, value: Number(`0.${m[1]}`) };
}

/**
 * Parses `s` as QEMU's `qemu_strtosz` does, as a 64-bit unsigned size.
 *
 * @example
 * ```ts
 * import { strtosz } from "./cvtnum.ts";
 * console.assert(strtosz("1.5k").value === 1536n);
 * console.assert(strtosz("1.5").error === "EINVAL");
 * ```
 */
export function strtosz(s: string): SizeResult {
  let hexSuffix = false;
  const done = (end: number, r: { value?: bigint; error?: SizeError }): SizeResult => {
    if (end !== s.length) return { error: "EINVAL", hexSuffix };
    return r.error ? { error: r.error, hexSuffix } : { value: r.value!, hexSuffix };
  };
  const dec = strtoull(s, 0, 10);
  if (dec.end === 0) return { error: "EINVAL", hexSuffix };
  if (dec.overflow) return done(dec.end, { error: "ERANGE" });
  if (s.slice(0, dec.end).includes("-")) return done(0, { error: "EINVAL" });
  let val = dec.value;
  let end = dec.end;
  let valf = 0n;
  let hex = false;
  if (val === 0n && (s[end] === "x" || s[end] === "X")) {
    const h = strtoull(s, 0, 16);
    if (h.overflow) return done(h.end, { error: "ERANGE" });
    val = h.value;
    end = h.end;
    hex = true;
    if (s[end] === ".") return done(0, { error: "EINVAL" });
  } else if (s[end] === ".") {
    const f = fraction(s, end);
    if (f === "exponent") return done(0, { error: "EINVAL" });
    if (f === null) {
      end++;
    } else {
      end = f.end;
      // (uint64_t)(fraction * 2^64): a fraction that rounds to 1.0 overflows to 0 on x86-64.
      const scaled = f.value * 2 ** 64;
      valf = scaled >= 2 ** 64 ? 0n : BigInt(Math.trunc(scaled));
    }
  }
  const shift = SUFFIX_SHIFT[(s[end] ?? "").toUpperCase()];
  if (shift !== undefined && s[end] !== undefined) {
    if (hex) hexSuffix = true;
    end++;
  }
  const mulShift = shift ?? 0n;
  if (mulShift === 0n) {
    if (valf !== 0n) return done(0, { error: "EINVAL" });
    return done(end, { value: val });
  }
  const mul = 1n << mulShift;
  const prodf = valf * mul;
  let result = val * mul + (prodf >> 64n);
  if ((prodf & (TWO64 - 1n)) >> 63n) result += 1n;
  if (result >= TWO64) return done(end, { error: "ERANGE" });
  return done(end, { value: result });
}

/** qemu-io's `cvtnum`: {@link strtosz}, refusing values above INT64_MAX with ERANGE. */
export function cvtnum(s: string): SizeResult {
  const r = strtosz(s);
  if (r.value !== undefined && r.value > INT64_MAX) {
    return { error: "ERANGE", hexSuffix: r.hexSuffix };
  }
  return r;
}

/** qemu-io's message for a failed {@link cvtnum}. */
export function cvtnumError(error: SizeError, arg: string): string {
  return error === "ERANGE"
    ? `Parsing error: argument too large -- ${arg}`
    : `Parsing error: non-numeric argument, or extraneous/unrecognized suffix -- ${arg}`;
}

/** The deprecation warning QEMU prints for `0x1k`. */
export function hexSuffixWarning(prog: string, arg: string): string {
  return `${prog}: warning: Using a multiplier suffix on hex numbers is deprecated: ${arg}`;
}
