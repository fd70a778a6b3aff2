/**
 * Dirty bitmap commands: `block-dirty-bitmap-add`, `-remove`, `-clear`, `-enable`,
 * `-disable`, `-merge`, and `transaction` with the bitmap actions and `abort`. The checks
 * and messages are qemu-storage-daemon 7.2's (observed), the operations core's
 * {@link DirtyBitmaps}. A transaction applies its actions in order inside a drained section
 * of every node and, when one fails, undoes those already applied: all or nothing.
 *
 * @module
 */

import {
  type BitmapAddArgs,
  type BitmapMergeArgs,
  type BitmapRef,
  type BitmapSource,
  DirtyBitmaps,
  Transaction,
} from "@blockgraph/core";
import type { Daemon, QmpCommand } from "./daemon.ts";
import { type ArgsSchema, checkArgs } from "./qmp_args.ts";
import { genericError } from "./qmp_error.ts";

const REF_ARGS: ArgsSchema = { node: "str", name: "str" };
const ADD_ARGS: ArgsSchema = {
  node: "str",
  name: "str",
  "*granularity": "uint32",
  "*persistent": "bool",
  "*disabled": "bool",
};
const MERGE_ARGS: ArgsSchema = { node: "str", target: "str", bitmaps: "any" };

/**
 * A list of BlockDirtyBitmapOrStr (merge sources, export bitmaps): names, or `{node, name}`
 * objects, with QEMU's messages (its alternate reports a bad element as `'null'`).
 */
export function checkBitmapList(
  value: unknown,
  path: string,
  keyval = false,
): BitmapSource[] {
  if (!Array.isArray(value)) {
    throw genericError(`Invalid parameter type for '${path}', expected: array`);
  }
  return value.map((v, i) => {
    if (typeof v === "string") return v;
    if (typeof v === "object" && v !== null && !Array.isArray(v)) {
      const r = checkArgs(v as Record<string, unknown>, REF_ARGS, {
        prefix: `${path}[${i}].`,
        keyval,
      });
      return { node: r.node as string, name: r.name as string };
    }
    throw genericError("Invalid parameter type for 'null', expected: BlockDirtyBitmapOrStr");
  });
}

/** Checks the arguments of one bitmap command; `prefix` names where they sit. */
function checkBitmapArgs(
  type: BitmapActionType,
  data: Record<string, unknown>,
  prefix = "",
): Record<string, unknown> {
  switch (type) {
    case "block-dirty-bitmap-add": {
      return checkArgs(data, ADD_ARGS, { prefix });
    }
    case "block-dirty-bitmap-merge": {
      const a = checkArgs(data, MERGE_ARGS, { prefix });
      a.bitmaps = checkBitmapList(a.bitmaps, `${prefix}bitmaps`);
      return a;
    }
    default:
      return checkArgs(data, REF_ARGS, { prefix });
  }
}

const BITMAP_ACTIONS = [
  "block-dirty-bitmap-add",
  "block-dirty-bitmap-remove",
  "block-dirty-bitmap-clear",
  "block-dirty-bitmap-enable",
  "block-dirty-bitmap-disable",
  "block-dirty-bitmap-merge",
] as const;

type BitmapActionType = typeof BITMAP_ACTIONS[number];

/** Every action type QEMU's `transaction` knows (TransactionActionKind). */
const ACTION_TYPES = [
  "abort",
  ...BITMAP_ACTIONS,
  "blockdev-backup",
  "blockdev-snapshot",
  "blockdev-snapshot-internal-sync",
  "blockdev-snapshot-sync",
  "drive-backup",
];

/** Runs one bitmap command on `bitmaps`, in `tran` when given. */
function runBitmapAction(
  bitmaps: DirtyBitmaps,
  type: BitmapActionType,
  a: Record<string, unknown>,
  tran?: Transaction,
): void | Promise<void> {
  switch (type) {
    case "block-dirty-bitmap-add":
      bitmaps.add(a as unknown as BitmapAddArgs, tran);
      return;
    case "block-dirty-bitmap-remove":
      return bitmaps.remove(a as unknown as BitmapRef, tran);
    case "block-dirty-bitmap-clear":
      return bitmaps.clear(a as unknown as BitmapRef, tran);
    case "block-dirty-bitmap-enable":
      return bitmaps.enable(a as unknown as BitmapRef, tran);
    case "block-dirty-bitmap-disable":
      return bitmaps.disable(a as unknown as BitmapRef, tran);
    case "block-dirty-bitmap-merge":
      return bitmaps.merge(a as unknown as BitmapMergeArgs, tran);
  }
}

/** One checked transaction action. */
interface Action {
  type: string;
  data: Record<string, unknown>;
}

/** Checks `transaction`'s arguments as QEMU's visitor does, before anything runs. */
function checkTransaction(args: Record<string, unknown>): { actions: Action[]; grouped: boolean } {
  const a = checkArgs(args, { actions: "any", "*properties": "any" });
  if (!Array.isArray(a.actions)) {
    throw genericError("Invalid parameter type for 'actions', expected: array");
  }
  const actions = a.actions.map((raw, i): Action => {
    const at = `actions[${i}]`;
    if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
      throw genericError(`Invalid parameter type for '${at}', expected: object`);
    }
    const r = raw as Record<string, unknown>;
    const type = r.type;
    if (type === undefined) throw genericError(`Parameter '${at}.type' is missing`);
    if (typeof type !== "string") {
      throw genericError(`Invalid parameter type for '${at}.type', expected: string`);
    }
    // QEMU names a flat union's discriminator without its path.
    if (!ACTION_TYPES.includes(type)) {
      throw genericError(`Parameter 'type' does not accept value '${type}'`);
    }
    const c = checkArgs(r, { type: "str", data: "any" }, { prefix: `${at}.` });
    const data = c.data;
    if (typeof data !== "object" || data === null || Array.isArray(data)) {
      throw genericError(`Invalid parameter type for '${at}.data', expected: object`);
    }
    const d = data as Record<string, unknown>;
    if (type === "abort") {
      checkArgs(d, {}, { prefix: `${at}.data.` });
      return { type, data: d };
    }
    if ((BITMAP_ACTIONS as readonly string[]).includes(type)) {
      return {
        type,
        data: checkBitmapArgs(type as BitmapActionType, d, `${at}.data.`),
      };
    }
    throw genericError(`Transaction action '${type}' is not supported by this daemon`);
  });
  let grouped = false;
  if (a.properties !== undefined) {
    const p = a.properties;
    if (typeof p !== "object" || p === null || Array.isArray(p)) {
      throw genericError("Invalid parameter type for 'properties', expected: object");
    }
    const mode = (p as Record<string, unknown>)["completion-mode"];
    if (typeof mode === "string" && mode !== "individual" && mode !== "grouped") {
      throw genericError(`Parameter 'completion-mode' does not accept value '${mode}'`);
    }
    checkArgs(p as Record<string, unknown>, { "*completion-mode": "str" }, {
      prefix: "properties.",
    });
    grouped = mode === "grouped";
  }
  return { actions, grouped };
}

/**
 * QMP `transaction`: every action applies, or none does. The actions run in order in a
 * drained section of every node (so no write lands between a step and its undo); the first
 * failure undoes the steps before it, newest first, and is the reply.
 */
export async function runTransaction(
  daemon: Daemon,
  args: Record<string, unknown>,
): Promise<void> {
  const { actions, grouped } = checkTransaction(args);
  if (actions.length === 0) return;
  const graph = daemon.graph;
  const bitmaps = new DirtyBitmaps(graph);
  await graph.drained([...graph.nodes()], () => {
    const tran = new Transaction();
    let ok = false;
    try {
      for (const { type, data } of actions) {
        if (type === "abort") throw genericError("Transaction aborted using Abort action");
        // Only backup actions (jobs) take part in a grouped completion.
        if (grouped) {
          throw genericError(
            `Action '${type}' does not support Transaction property completion-mode = grouped`,
          );
        }
        runBitmapAction(bitmaps, type as BitmapActionType, data, tran);
      }
      ok = true;
    } finally {
      tran.finalize(ok);
    }
  });
}

function bitmapCommand(type: BitmapActionType): QmpCommand {
  return {
    name: type,
    args: null,
    run(args, { daemon }) {
      const a = checkBitmapArgs(type, args);
      const done = runBitmapAction(new DirtyBitmaps(daemon.graph), type, a);
      return done instanceof Promise ? done.then(() => ({})) : {};
    },
  };
}

/** The dirty bitmap commands and `transaction`. */
export const bitmapCommands: readonly QmpCommand[] = [
  ...BITMAP_ACTIONS.map(bitmapCommand),
  {
    name: "transaction",
    args: null,
    async run(args, { daemon }) {
      await runTransaction(daemon, args);
      return {};
    },
  },
];
