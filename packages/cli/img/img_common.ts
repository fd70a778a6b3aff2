/**
 * What qemu-img's subcommands share: its error wording (`qemu-img: ...`, the "Try
 * 'qemu-img --help'" hint) and its option-error messages.
 *
 * @module
 */

import type { CliIo } from "../common/cli_io.ts";
import type { GetoptError } from "../common/getopt.ts";

/** qemu-img's `error_report`: prints `qemu-img: message`. */
export function imgError(io: CliIo, message: string): void {
  io.err(`qemu-img: ${message}\n`);
}

/** qemu-img's `error_exit`: the message and the `--help` hint; returns exit status 1. */
export function imgErrorExit(io: CliIo, message: string): number {
  io.err(`qemu-img: ${message}\nTry 'qemu-img --help' for more information\n`);
  return 1;
}

/** qemu-img's messages for a bad option (`unrecognized option '-x'`), then exit status 1. */
export function imgOptionError(io: CliIo, e: GetoptError): number {
  if (e.kind === "missing" || e.kind === "long-missing") {
    return imgErrorExit(io, `missing argument for option '${e.word}'`);
  }
  return imgErrorExit(io, `unrecognized option '${e.word}'`);
}
