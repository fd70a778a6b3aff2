/**
 * qemu-io's command line interpreter: splits a line at spaces, finds the command by name or
 * alias, checks that an image is open and the argument count, takes the permissions the
 * command needs, and runs it. Also the `help` command, which lists the table.
 *
 * @module
 */

import { BlockError } from "@blockgraph/core";
import { type CommandResult, FAILED, type IoCommand } from "./command.ts";
import { COMMAND_HELP } from "./help_text.ts";
import {
  allocCommand,
  discardCommand,
  flushCommand,
  infoCommand,
  lengthCommand,
  mapCommand,
  truncateCommand,
} from "./image_commands.ts";
import {
  aioFlushCommand,
  aioReadCommand,
  aioWriteCommand,
  readCommand,
  readvCommand,
  writeCommand,
  writevCommand,
} from "./rw_commands.ts";
import type { IoSession } from "./session.ts";
import {
  abortCommand,
  breakCommand,
  closeCommand,
  openCommand,
  quitCommand,
  removeBreakCommand,
  reopenCommand,
  resumeCommand,
  sigraiseCommand,
  sleepCommand,
  waitBreakCommand,
} from "./session_commands.ts";

function helpLine(typed: string, name: string): string {
  const h = COMMAND_HELP[name]!;
  return `${typed} ${h.args !== null ? h.args + " " : ""}-- ${h.oneline}\n`;
}

/** `help [command]`: lists every command, or one command's full help. */
export const helpCommand: IoCommand = {
  name: "help",
  altname: "?",
  argmin: 0,
  argmax: 1,
  noFileOk: true,
  run(s, argv) {
    if (argv.length === 1) {
      for (const c of COMMANDS) s.out(helpLine(c.name, c.name));
      s.out("\nUse 'help commandname' for extended help.\n");
      return Promise.resolve(0);
    }
    const c = findCommand(argv[1]!);
    if (!c) {
      s.out(`command ${argv[1]} not found\n`);
      return Promise.resolve(FAILED);
    }
    s.out(helpLine(argv[1]!, c.name) + COMMAND_HELP[c.name]!.help);
    return Promise.resolve(0);
  },
};

/** Every command, sorted by name as qemu-io keeps them. */
export const COMMANDS: readonly IoCommand[] = [
  abortCommand,
  aioFlushCommand,
  aioReadCommand,
  aioWriteCommand,
  allocCommand,
  breakCommand,
  closeCommand,
  discardCommand,
  flushCommand,
  helpCommand,
  infoCommand,
  lengthCommand,
  mapCommand,
  openCommand,
  quitCommand,
  readCommand,
  readvCommand,
  removeBreakCommand,
  reopenCommand,
  resumeCommand,
  sigraiseCommand,
  sleepCommand,
  truncateCommand,
  waitBreakCommand,
  writeCommand,
  writevCommand,
];

/** The command called `name` (or with that alias). */
export function findCommand(name: string): IoCommand | undefined {
  return COMMANDS.find((c) => c.name === name || c.altname === name);
}

function countError(c: IoCommand, typed: string, n: number): string {
  if (c.argmax === -1) {
    return `bad argument count ${n} to ${typed}, expected at least ${c.argmin} arguments\n`;
  }
  if (c.argmin === c.argmax) {
    return `bad argument count ${n} to ${typed}, expected ${c.argmin} arguments\n`;
  }
  return `bad argument count ${n} to ${typed}, expected between ${c.argmin} and ${c.argmax} arguments\n`;
}

/** Takes the permissions `c` needs; reports QEMU's message and returns false on failure. */
function takePerm(s: IoSession, c: IoCommand): boolean {
  const blk = s.backend;
  if (!c.perm || !blk || !blk.isAvailable || !blk.root) return true;
  const perm = blk.root.perm;
  if ((c.perm & ~perm) === 0) return true;
  if (blk.node!.flags.readOnly) {
    s.report("Block node is read-only");
    return false;
  }
  try {
    blk.setPerm(perm | c.perm, blk.root.shared);
  } catch (e) {
    s.report(BlockError.from(e).message);
    return false;
  }
  return true;
}

/**
 * Runs one command line as qemu-io's `qemuio_command` does. Returns 0 on success; anything
 * else marks the run as failed.
 */
export async function runCommand(s: IoSession, line: string): Promise<CommandResult> {
  const argv = line.split(" ").filter((w) => w !== "");
  if (argv.length === 0) return 0;
  const c = findCommand(argv[0]!);
  if (!c) {
    s.err(`command "${argv[0]}" not found\n`);
    return FAILED;
  }
  if (!c.noFileOk && !s.image) {
    s.err("no file open, try 'help open'\n");
    return FAILED;
  }
  const n = argv.length - 1;
  if (n < c.argmin || (c.argmax !== -1 && n > c.argmax)) {
    s.err(countError(c, argv[0]!, n));
    return FAILED;
  }
  if (!takePerm(s, c)) return FAILED;
  return await c.run(s, argv);
}
