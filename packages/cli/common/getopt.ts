/**
 * GNU `getopt_long` as QEMU's tools use it: short options clustered (`-qP 0xab`), arguments
 * attached or separate, long options with unique-prefix matching and `=value`, `--` ending
 * the options, and operands permuted to the end so options may follow them
 * (`read 0 512 -q`). Errors are returned, not printed: each tool words them its own way.
 *
 * @module
 */

/** Whether a long option takes an argument. */
export type LongArg = "none" | "required";

/** A long option and the short option character it stands for. */
export interface LongOption {
  /** The name without the leading `--`. */
  readonly name: string;
  /** Whether it takes an argument. */
  readonly arg: LongArg;
  /** The option character reported when it is seen (a short option or a private code). */
  readonly key: string;
}

/** One option as found on the command line. */
export interface FoundOption {
  /** The option character (or the `key` of a long option). */
  readonly key: string;
  /** The argument, when the option takes one. */
  readonly value: string | undefined;
}

/** What went wrong while parsing, in glibc's categories. */
export type GetoptErrorKind =
  | "invalid"
  | "missing"
  | "unrecognized"
  | "ambiguous"
  | "long-missing"
  | "long-no-arg";

/** A parse error: its kind and the offending option text. */
export interface GetoptError {
  /** The kind of error. */
  readonly kind: GetoptErrorKind;
  /** The option character (short) or the option as typed (long, with `--`). */
  readonly option: string;
  /** The whole command-line word the error is in (`-qx`, `--bogus=1`). */
  readonly word: string;
  /** For ambiguous long options: the names that matched. */
  readonly candidates?: readonly string[];
}

/** The result of {@link getopt}: options in order, operands in order, or the first error. */
export interface GetoptResult {
  /** Options in the order they appeared (up to the first error). */
  readonly options: FoundOption[];
  /** Operands (non-option arguments), in order. */
  readonly operands: string[];
  /** The first error, if any; parsing stops there. */
  readonly error: GetoptError | undefined;
}

/**
 * Parses `args` against a getopt `optstring` (`"bCl:P:q"`: a colon marks an option taking an
 * argument) and optional long options.
 *
 * @example
 * ```ts
 * import { getopt } from "./getopt.ts";
 * const r = getopt(["0", "512", "-qP", "0xab"], "qP:");
 * console.assert(r.operands.join(" ") === "0 512" && r.options.length === 2);
 * ```
 */
export function getopt(
  args: readonly string[],
  optstring: string,
  longOptions: readonly LongOption[] = [],
): GetoptResult {
  const options: FoundOption[] = [];
  const operands: string[] = [];
  const takesArg = new Map<string, boolean>();
  for (let i = 0; i < optstring.length; i++) {
    const c = optstring[i]!;
    if (c === ":" || c === "+" || c === "-") continue;
    takesArg.set(c, optstring[i + 1] === ":");
  }
  // A leading "+" (after an optional ":") stops at the first operand, as POSIX getopt does.
  const stopAtOperand = optstring.replace(/^:/, "").startsWith("+");
  const fail = (error: GetoptError): GetoptResult => ({ options, operands, error });
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!;
    if (arg === "--") {
      operands.push(...args.slice(i + 1));
      break;
    }
    if (arg.startsWith("--") && longOptions.length > 0) {
      const eq = arg.indexOf("=");
      const name = arg.slice(2, eq < 0 ? undefined : eq);
      const inline = eq < 0 ? undefined : arg.slice(eq + 1);
      const exact = longOptions.find((o) => o.name === name);
      const matches = exact ? [exact] : longOptions.filter((o) => o.name.startsWith(name));
      if (matches.length === 0) return fail({ kind: "unrecognized", option: arg, word: arg });
      if (matches.length > 1) {
        return fail({
          kind: "ambiguous",
          option: arg.slice(0, eq < 0 ? undefined : eq),
          word: arg,
          candidates: matches.map((m) => m.name),
        });
      }
      const opt = matches[0]!;
      if (opt.arg === "none") {
        if (inline !== undefined) {
          return fail({ kind: "long-no-arg", option: `--${opt.name}`, word: arg });
        }
        options.push({ key: opt.key, value: undefined });
        continue;
      }
      if (inline !== undefined) {
        options.push({ key: opt.key, value: inline });
      } else if (i + 1 < args.length) {
        options.push({ key: opt.key, value: args[++i]! });
      } else {
        return fail({ kind: "long-missing", option: `--${opt.name}`, word: arg });
      }
      continue;
    }
    if (arg.length < 2 || arg[0] !== "-") {
      if (stopAtOperand) {
        operands.push(...args.slice(i));
        break;
      }
      operands.push(arg);
      continue;
    }
    for (let j = 1; j < arg.length; j++) {
      const c = arg[j]!;
      const needs = takesArg.get(c);
      if (needs === undefined) return fail({ kind: "invalid", option: c, word: arg });
      if (!needs) {
        options.push({ key: c, value: undefined });
        continue;
      }
      if (j + 1 < arg.length) {
        options.push({ key: c, value: arg.slice(j + 1) });
      } else if (i + 1 < args.length) {
        options.push({ key: c, value: args[++i]! });
      } else {
        return fail({ kind: "missing", option: c, word: arg });
      }
      break;
    }
  }
  return { options, operands, error: undefined };
}

/** glibc's message for a getopt error, prefixed with `prog` (`read: invalid option -- 'x'`). */
export function glibcMessage(prog: string, e: GetoptError): string {
  switch (e.kind) {
    case "invalid":
      return `${prog}: invalid option -- '${e.option}'`;
    case "missing":
      return `${prog}: option requires an argument -- '${e.option}'`;
    case "unrecognized":
      return `${prog}: unrecognized option '${e.option}'`;
    case "ambiguous":
      return `${prog}: option '${e.option}' is ambiguous; possibilities:` +
        (e.candidates ?? []).map((c) => ` '--${c}'`).join("");
    case "long-missing":
      return `${prog}: option '${e.option}' requires an argument`;
    case "long-no-arg":
      return `${prog}: option '${e.option}' doesn't allow an argument`;
  }
}
