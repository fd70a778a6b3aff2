/**
 * `blockgraph img snapshot`: qemu-img's `snapshot [-l | -a name | -c name | -d name] [-q] [-U]
 * [--image-opts] filename` over the format's internal snapshots, with its "Snapshot list:"
 * table and messages.
 *
 * @module
 */

import { BlockError, type Graph } from "@blockgraph/core";
import type { CliIo } from "../common/cli_io.ts";
import { getopt } from "../common/getopt.ts";
import { qcow2Of } from "./image_facts.ts";
import { imgError, imgErrorExit, imgOpen, imgOptionError } from "./img_common.ts";
import { imgCommonOption } from "./img_help.ts";
import { snapshotRow } from "./info.ts";

type Action = "l" | "a" | "c" | "d";

/** Runs `img snapshot` with `args` (after `snapshot`); returns the exit status. */
export async function imgSnapshot(
  graph: Graph,
  args: readonly string[],
  io: CliIo,
): Promise<number> {
  const r = getopt(args, ":la:c:d:hqU", [
    { name: "help", arg: "none", key: "h" },
    { name: "object", arg: "required", key: "object" },
    { name: "image-opts", arg: "none", key: "image-opts" },
    { name: "force-share", arg: "none", key: "U" },
  ]);
  let action: Action | null = null;
  let name = "";
  let forceShare = false;
  let imageOpts = false;
  for (const o of r.options) {
    const stop = imgCommonOption(graph, io, o);
    if (stop !== null) return stop;
    if (o.key === "l" || o.key === "a" || o.key === "c" || o.key === "d") {
      if (action) return imgErrorExit(io, "Cannot mix '-l', '-a', '-c', '-d'");
      action = o.key;
      name = o.value ?? "";
    } else if (o.key === "q") continue;
    else if (o.key === "U") forceShare = true;
    else if (o.key === "image-opts") imageOpts = true;
  }
  if (r.error) return imgOptionError(io, r.error);
  if (r.operands.length !== 1) return imgErrorExit(io, "Expecting one image file name");
  const filename = r.operands[0]!;
  const image = await imgOpen(graph, io, {
    filename,
    imageOpts,
    readOnly: action === "l",
    forceShare,
  });
  if (!image) return 1;
  try {
    const q = qcow2Of(image.node);
    if (action === "l") {
      const list = q?.snapshotList() ?? [];
      if (list.length > 0) {
        io.out("Snapshot list:\n" + snapshotRow(null) + "\n");
        for (const s of list) io.out(snapshotRow(s) + "\n");
      }
      return 0;
    }
    if (action === null) return 0;
    const what = { a: "apply", c: "create", d: "delete" }[action];
    try {
      if (!q) {
        const why = {
          c: "-95 (Operation not supported)",
          a: "Block driver does not support snapshots",
          d: "snapshot not found",
        }[action];
        throw new BlockError("ENOTSUP", why);
      }
      if (action === "c") await q.snapshotCreate(name);
      else if (action === "a") await q.snapshotApply(name);
      else await q.snapshotDelete(name);
    } catch (e) {
      imgError(io, `Could not ${what} snapshot '${name}': ${BlockError.from(e).message}`);
      return 1;
    }
    return 0;
  } finally {
    await image.backend.unref();
  }
}
