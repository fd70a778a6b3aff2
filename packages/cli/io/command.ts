/**
 * The shape of a qemu-io command and the helpers every command shares: usage text, option
 * parsing with glibc's messages, number and pattern arguments.
 *
 * @module
 */

import { type FoundOption, getopt, glibcMessage } from "../common/getopt.ts";
import { cvtnum, cvtnumError, hexSuffixWarning } from "../common/cvtnum.ts";
import { COMMAND_HELP } from "./help_text.ts";
import type { IoSession } from "./session.ts";

/** A command's result: 0 for success, anything else makes qemu-io exit with status 1. */
export type CommandResult = number;

/** One qemu-io command. */
export interface IoCommand {
  /** The name (`read`). */
  readonly name: string;
  /** A short alias (`r`). */
  readonly altname?: string;
  /** The least number of arguments. */
  readonly argmin: number;
  /** The most arguments, or -1 for no limit. */
  readonly argmax: number;
  /** Runs without an open image (`help`, `open`, `sleep`). */
  readonly noFileOk?: boolean;
  /** Permissions (`Perm` bits) the command takes on the Backend before it runs. */
  readonly perm?: number;
  /** Runs the command; `argv[0]` is the name as typed. */
  run(s: IoSession, argv: string[]): Promise<CommandResult>;
}

/** QEMU's largest request, `BDRV_REQUEST_MAX_BYTES`. */
export const REQUEST_MAX_BYTES = 2147483136;

/** The failure result commands return (QEMU's -EINVAL). */
export const FAILED = -22;

/** Prints `name args -- oneline` (qemu-io's `qemuio_command_usage`) and fails. */
export function usage(s: IoSession, name: string): CommandResult {
  const h = COMMAND_HELP[name]!;
  s.out(`${name} ${h.args ?? "(null)"} -- ${h.oneline}\n`);
  return FAILED;
}

/** Parsed options of a command: the options found, the operands, or a failure result. */
export type ParsedArgs = { options: FoundOption[]; operands: string[] } | { failed: CommandResult };

/** getopt over `argv` (without the command name); on error prints glibc's message and usage. */
export function parseArgs(
  s: IoSession,
  name: string,
  argv: readonly string[],
  optstring: string,
): ParsedArgs {
  const r = getopt(argv.slice(1), optstring);
  if (r.error) {
    s.err(glibcMessage(argv[0]!, r.error) + "\n");
    return { failed: usage(s, name) };
  }
  return { options: r.options, operands: r.operands };
}

/** qemu-io's `cvtnum` with its messages; `null` after printing the error. */
export function number(s: IoSession, arg: string): number | null {
  const r = cvtnum(arg);
  if (r.hexSuffix) s.err(hexSuffixWarning("qemu-io", arg) + "\n");
  if (r.error) {
    s.out(cvtnumError(r.error, arg) + "\n");
    return null;
  }
  return Number(r.value!);
}

/** C's `strtol(s, &end, 0)` over the whole text; `null` when text is left over or none read. */
export function strtol0(text: string): number | null {
  const m = /^[ \t\n\v\f\r]*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)$/.exec(text);
  if (!m) {
    // "0x" with no hex digits reads as 0 followed by an unparsed "x".
    return null;
  }
  const body = m[2]!;
  let v: number;
  if (/^0[xX]/.test(body)) v = Number.parseInt(body.slice(2), 16);
  else if (body.length > 1 && body[0] === "0") v = Number.parseInt(body, 8);
  else v = Number(body);
  return m[1] === "-" ? -v : v;
}

/** qemu-io's `parse_pattern`: one byte, in C's `strtol` base-0 syntax; `null` after an error. */
export function pattern(s: IoSession, arg: string): number | null {
  const v = strtol0(arg);
  if (v === null || v < 0 || v > 255) {
    s.out(`${arg} is not a valid pattern byte\n`);
    return null;
  }
  return v;
}

/** Elapsed seconds since `start` (a `performance.now()` reading). */
export function since(start: number): number {
  return (performance.now() - start) / 1000;
}
