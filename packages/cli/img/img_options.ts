/**
 * qemu-img's `-o` option lists (create, convert, amend, measure): how several `-o` join, the
 * lists qemu-img refuses ("Invalid option list"), `-o help` / `-o ?`, and the option help
 * qemu-img 7.2 prints for a format: its create (or amend) options sorted by name, then,
 * given a filename, the protocol's. Types and descriptions come from the drivers' option
 * schemas, and those of amend alone (LUKS key slots) from QEMU's words.
 *
 * @module
 */

import type { BlockDriver, Graph, OptionSpec } from "@blockgraph/core";
import { QCOW2_AMEND_OPTIONS } from "@blockgraph/drivers";
import type { CliIo } from "../common/cli_io.ts";
import { creatableFormat, imgError } from "./img_common.ts";

/**
 * QEMU's `is_valid_option_list`: a list can be joined to others with `,` unless it is empty,
 * starts with `,` or ends in an odd number of `,` (which would escape the separator).
 */
export function isValidOptionList(list: string): boolean {
  if (list === "" || list.startsWith(",")) return false;
  let i = list.length;
  while (i > 0 && list[i - 1] === ",") i--;
  return (list.length - i) % 2 === 0;
}

/**
 * Adds one `-o` argument to the joined list (qemu-img's `accumulate_options`); prints
 * "Invalid option list" and returns `null` when the argument cannot be joined.
 */
export function accumulateOptions(
  io: CliIo,
  joined: string | undefined,
  list: string,
): string | null {
  if (!isValidOptionList(list)) {
    imgError(io, `Invalid option list: ${list}`);
    return null;
  }
  return joined === undefined ? list : `${joined},${list}`;
}

/** QEMU's `has_help_option`: whether one element of the list is `help` or `?`. */
export function hasHelpOption(list: string): boolean {
  let element = "";
  for (let i = 0; i <= list.length; i++) {
    if (i === list.length || (list[i] === "," && list[i + 1] !== ",")) {
      if (element === "help" || element === "?") return true;
      element = "";
    } else if (list[i] === ",") {
      element += ",";
      i++;
    } else element += list[i];
  }
  return false;
}

/** One line of an option help: name, QEMU's type name, description. */
interface HelpEntry {
  readonly name: string;
  readonly type: string;
  readonly description: string;
}

const TYPE_NAMES: Record<OptionSpec["type"], string> = {
  size: "size",
  bool: "bool (on/off)",
  int: "num",
  string: "str",
  enum: "str",
};

/** qcow2's amend options that create does not take (LUKS key slots), in QEMU's words. */
const AMEND_ONLY: readonly HelpEntry[] = [
  {
    name: "encrypt.iter-time",
    type: "num",
    description: "Time to spend in PBKDF in milliseconds",
  },
  {
    name: "encrypt.keyslot",
    type: "num",
    description: "Select a single keyslot to modify explicitly",
  },
  {
    name: "encrypt.new-secret",
    type: "str",
    description: "New secret to set in the matching keyslots. Empty string to erase",
  },
  {
    name: "encrypt.old-secret",
    type: "str",
    description: "Select all keyslots that match this password",
  },
  {
    name: "encrypt.state",
    type: "str",
    description: "Select new state of affected keyslots (active/inactive)",
  },
];

/**
 * Create options a format driver takes only to hand them to its protocol (raw's
 * preallocation): QEMU lists them with the protocol's options, not the format's.
 */
const PASSED_TO_PROTOCOL: Record<string, readonly string[]> = { raw: ["preallocation"] };

/** The create options `drv` lists itself, as QEMU's `create_opts` would. */
function ownCreateOptions(drv: BlockDriver): HelpEntry[] {
  const out: HelpEntry[] = [];
  const passed = PASSED_TO_PROTOCOL[drv.name] ?? [];
  for (const [name, spec] of Object.entries(drv.createOptions ?? {})) {
    if (name === "filename" || passed.includes(name)) continue;
    out.push({ name, type: TYPE_NAMES[spec.type], description: spec.description });
  }
  return out;
}

/** QEMU's `qemu_opts_print_help` without the defaults: sorted by name, aligned at 24. */
function printEntries(io: CliIo, entries: readonly HelpEntry[]): void {
  const sorted = [...entries].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  for (const e of sorted) {
    io.out(`${`  ${e.name}=<${e.type}>`.padEnd(24)} - ${e.description}\n`);
  }
}

/**
 * qemu-img's `print_block_option_help`: the create options of format `fmtName`, with the
 * protocol's when `filename` is given. Returns the exit status.
 */
export function createOptionsHelp(
  graph: Graph,
  io: CliIo,
  fmtName: string,
  filename: string | undefined,
): number {
  const drv = creatableFormat(graph, io, fmtName);
  if (!drv) return 1;
  const entries = ownCreateOptions(drv);
  if (filename !== undefined) {
    let proto: BlockDriver;
    try {
      proto = graph.registry.protocolFor(filename);
    } catch (e) {
      imgError(io, (e as Error).message);
      return 1;
    }
    if (!proto.create) {
      imgError(io, `Protocol driver '${proto.name}' does not support image creation`);
      return 1;
    }
    // QEMU appends the protocol's list; a name already there keeps the format's entry.
    for (const e of ownCreateOptions(proto)) {
      if (!entries.some((x) => x.name === e.name)) entries.push(e);
    }
    for (const name of PASSED_TO_PROTOCOL[drv.name] ?? []) {
      const spec = proto.createOptions?.[name];
      if (spec && !entries.some((x) => x.name === name)) {
        entries.push({ name, type: TYPE_NAMES[spec.type], description: spec.description });
      }
    }
    io.out("Supported options:\n");
    printEntries(io, entries);
    return 0;
  }
  io.out(`Supported ${fmtName} options:\n`);
  printEntries(io, entries);
  io.out(
    "\nThe protocol level may support further options.\n" +
      "Specify the target filename to include those options.\n",
  );
  return 0;
}

/** qemu-img amend's `print_amend_option_help` for format `fmtName`; returns the exit status. */
export function amendOptionsHelp(graph: Graph, io: CliIo, fmtName: string): number {
  const drv = graph.registry.find(fmtName);
  if (!drv) {
    imgError(io, `Unknown file format '${fmtName}'`);
    return 1;
  }
  if (drv.name !== "qcow2") {
    imgError(io, `Format driver '${fmtName}' does not support option amendment`);
    return 1;
  }
  const entries: HelpEntry[] = [...AMEND_ONLY];
  for (const name of QCOW2_AMEND_OPTIONS) {
    const spec = drv.createOptions?.[name];
    if (spec && !entries.some((e) => e.name === name)) {
      entries.push({ name, type: TYPE_NAMES[spec.type], description: spec.description });
    }
  }
  io.out(`Amend options for '${fmtName}':\n`);
  printEntries(io, entries);
  return 0;
}
