/**
 * `blockgraph img rebase`: qemu-img's `rebase [-f fmt] [-t cache] [-T src_cache] [-p] [-q] [-u]
 * [-U] -b backing_file [-F backing_fmt] filename`. Safe mode copies into the overlay what
 * differs between the old and the new backing chain where the overlay holds nothing; `-u`
 * only rewrites the backing file name in the header.
 *
 * @module
 */

import { BlockError, BlockStatusFlags, type Graph, type Node } from "@blockgraph/core";
import type { CliIo } from "../common/cli_io.ts";
import { getopt } from "../common/getopt.ts";
import type { OpenedImage } from "../common/open_image.ts";
import { resolveBackingName } from "./create.ts";
import { qcow2Of } from "./image_facts.ts";
import { imgError, imgErrorExit, imgOpen, imgOptionError } from "./img_common.ts";
import { imgCommonOption } from "./img_help.ts";
import { Progress } from "./progress.ts";

const CHUNK = 1 << 20;

/** Copies into `top` what its old chain reads differently from `newBase` where `top` is empty. */
async function copyDifferences(top: Node, newBase: Node | null, prog: Progress): Promise<void> {
  const len = top.getLength();
  const a = new Uint8Array(CHUNK);
  const b = new Uint8Array(CHUNK);
  for (let off = 0; off < len;) {
    const st = await top.blockStatus(off, Math.min(len - off, CHUNK), false);
    const n = st.pnum;
    if (!(st.status & BlockStatusFlags.ALLOCATED)) {
      const old = a.subarray(0, n);
      const neu = b.subarray(0, n);
      await top.read(off, old);
      neu.fill(0);
      const newLen = newBase?.getLength() ?? 0;
      if (newBase && off < newLen) {
        await newBase.read(off, neu.subarray(0, Math.min(n, newLen - off)));
      }
      const cs = 512;
      for (let i = 0; i < n; i += cs) {
        const j = Math.min(n, i + cs);
        let same = true;
        for (let k = i; k < j; k++) {
          if (old[k] !== neu[k]) {
            same = false;
            break;
          }
        }
        if (!same) await top.write(off + i, old.subarray(i, j));
      }
    }
    off += n;
    prog.print(n / len * 100, 100);
  }
}

/** Runs `img rebase` with `args` (after `rebase`); returns the exit status. */
export async function imgRebase(
  graph: Graph,
  args: readonly string[],
  io: CliIo,
): Promise<number> {
  const r = getopt(args, ":hf:F:b:upt:T:qU", [
    { name: "help", arg: "none", key: "h" },
    { name: "object", arg: "required", key: "object" },
    { name: "image-opts", arg: "none", key: "image-opts" },
    { name: "force-share", arg: "none", key: "U" },
  ]);
  let format: string | undefined;
  let backing: string | undefined;
  let backingFmt: string | undefined;
  let unsafe = false;
  let progress = false;
  let quiet = false;
  let cache = "writeback";
  let imageOpts = false;
  for (const o of r.options) {
    const stop = imgCommonOption(graph, io, o);
    if (stop !== null) return stop;
    const v = o.value!;
    if (o.key === "f") format = v;
    else if (o.key === "F") backingFmt = v;
    else if (o.key === "b") backing = v;
    else if (o.key === "u") unsafe = true;
    else if (o.key === "p") progress = true;
    else if (o.key === "q") quiet = true;
    else if (o.key === "t") cache = v;
    else if (o.key === "image-opts") imageOpts = true;
  }
  if (r.error) return imgOptionError(io, r.error);
  if (quiet) progress = false;
  if (r.operands.length !== 1) return imgErrorExit(io, "Expecting one image file name");
  if (!unsafe && backing === undefined) {
    return imgErrorExit(io, "Must specify backing file (-b) or use unsafe mode (-u)");
  }
  const filename = r.operands[0]!;
  const image = await imgOpen(graph, io, {
    filename,
    format,
    imageOpts,
    readOnly: false,
    cache,
    noBacking: unsafe,
  });
  if (!image) return 1;
  let newBase: OpenedImage | null = null;
  const prog = new Progress(io, progress, 1);
  try {
    const q = qcow2Of(image.node);
    if (!q) {
      imgError(
        io,
        `Could not change the backing file to '${backing ?? ""}': Operation not supported`,
      );
      return 1;
    }
    if (!unsafe && backing !== "") {
      const name = resolveBackingName(backing!, filename);
      newBase = await imgOpen(graph, io, {
        filename: name,
        format: backingFmt,
        readOnly: true,
        forceShare: true,
        failurePrefix: `Could not open new backing file '${name}': `,
      });
      if (!newBase) return 1;
    }
    try {
      if (!unsafe) {
        prog.print(0, 100);
        await copyDifferences(image.node, newBase?.node ?? null, prog);
      }
      if (backingFmt === undefined && backing) {
        // QEMU 7.2 no longer records a backing file without its format.
        imgError(
          io,
          `Could not change the backing file to '${backing}': backing format must be specified`,
        );
        return 1;
      }
      await q.changeBackingFile(backing ?? "", backingFmt);
    } catch (e) {
      imgError(
        io,
        `Could not change the backing file to '${backing}': ${BlockError.from(e).message}`,
      );
      return 1;
    }
    prog.end();
    return 0;
  } finally {
    if (newBase) await newBase.backend.unref();
    await image.backend.unref();
  }
}
