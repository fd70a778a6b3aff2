/**
 * `blockgraph img rebase`: qemu-img's `rebase [-f fmt] [-t cache] [-T src_cache] [-p] [-q] [-u]
 * [-U] -b backing_file [-F backing_fmt] filename`. Safe mode copies into the overlay what
 * differs between the old and the new backing chain where the overlay holds nothing; `-u`
 * only rewrites the backing file name in the header.
 *
 * @module
 */

import { BlockError, BlockStatusFlags, type Graph, type Node } from "@blockgraph/core";
import { allocateIoMemory } from "@blockgraph/drivers";
import type { CliIo } from "../common/cli_io.ts";
import { getopt } from "../common/getopt.ts";
import type { OpenedImage } from "../common/open_image.ts";
import { chainStatus } from "./chain_status.ts";
import { compareBuffers } from "./compare.ts";
import { resolveBackingName } from "./create.ts";
import { qcow2Of } from "./image_facts.ts";
import { imgError, imgErrorExit, imgOpen, imgOptionError } from "./img_common.ts";
import { imgCommonOption } from "./img_help.ts";
import { Progress } from "./progress.ts";

/** Bytes compared at a time (qemu-img's IO_BUF_SIZE). */
const CHUNK = 2 << 20;
/** Chunks in flight. */
const WORKERS = 4;

/** A range of at most {@link CHUNK} bytes that `top` does not hold, and what reads as zeros. */
interface Piece {
  readonly off: number;
  readonly bytes: number;
  /** The old chain reads it as zeros (by block status). */
  readonly oldZero: boolean;
  /** The new base reads it as zeros (by block status, or past its end). */
  readonly newZero: boolean;
}

function readsZero(st: { status: number }): boolean {
  return (st.status & BlockStatusFlags.ZERO) !== 0;
}

/**
 * The pieces of `top` where it holds nothing and the old chain or the new base may hold
 * something; `skip` sees the bytes passed over (in one step however long a run is: a large,
 * mostly empty image costs block status calls, not a walk in chunks).
 */
async function* pieces(
  top: Node,
  newBase: Node | null,
  skip: (bytes: number) => void,
): AsyncGenerator<Piece> {
  const len = top.getLength();
  const newLen = newBase?.getLength() ?? 0;
  for (let off = 0; off < len;) {
    const st = await top.blockStatus(off, len - off, false);
    const end = off + st.pnum;
    if (st.status & BlockStatusFlags.ALLOCATED) {
      skip(st.pnum);
      off = end;
      continue;
    }
    while (off < end) {
      // `top` holds nothing here, so its chain answers for the old backing file.
      const old = await chainStatus(top, off, end - off);
      let n = old.pnum;
      let newZero = true;
      if (off < newLen) {
        const neu = await chainStatus(newBase!, off, Math.min(n, newLen - off));
        n = Math.min(n, neu.pnum);
        newZero = readsZero(neu);
      }
      if (readsZero(old) && newZero) skip(n);
      else {
        n = Math.min(n, CHUNK);
        yield { off, bytes: n, oldZero: readsZero(old), newZero };
      }
      off += n;
    }
  }
}

/**
 * Copies into `top` what its old chain reads differently from `newBase` where `top` is empty,
 * in runs of differing 512-byte sectors as qemu-img does, several chunks at once (the old and
 * the new side of each read together). A partial cluster a run writes is filled from the old
 * chain, which `top` still has until its header changes.
 */
async function copyDifferences(top: Node, newBase: Node | null, prog: Progress): Promise<void> {
  const len = top.getLength();
  const newLen = newBase?.getLength() ?? 0;
  const done = (n: number) => prog.print(n / len * 100, 100);
  const iter = pieces(top, newBase, done);
  // What reads as zeros is compared from here rather than read. Not I/O memory: that comes
  // from malloc, whose recycled chunks hold what they last held.
  const zeros = new Uint8Array(CHUNK);
  let failed: unknown = null;
  const worker = async () => {
    const mem = allocateIoMemory(2 * CHUNK);
    try {
      while (failed === null) {
        const r = await iter.next();
        if (r.done) return;
        const { off, bytes: n, oldZero, newZero } = r.value;
        const fromNew = Math.max(0, Math.min(n, newLen - off));
        const old = oldZero ? zeros.subarray(0, n) : mem.bytes.subarray(0, n);
        const neu = newZero ? zeros.subarray(0, n) : mem.bytes.subarray(CHUNK, CHUNK + n);
        if (!newZero) neu.fill(0, fromNew);
        await Promise.all([
          oldZero ? null : top.read(off, old),
          newZero ? null : newBase!.read(off, neu.subarray(0, fromNew)),
        ]);
        for (let i = 0; i < n;) {
          const c = compareBuffers(old.subarray(i), neu.subarray(i));
          if (c.differ) await top.write(off + i, old.subarray(i, i + c.pnum));
          i += c.pnum;
        }
        done(n);
      }
    } finally {
      mem.release();
    }
  };
  await Promise.all(Array.from({ length: WORKERS }, () =>
    worker().catch((e) => {
      failed ??= e;
    })));
  if (failed !== null) throw failed;
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
  let forceShare = false;
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
    else if (o.key === "U") forceShare = true;
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
    bulkWrite: !unsafe,
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
        // Shared only under -U, as qemu-img: a new backing file that something writes (the
        // image itself, say) is refused for its lock.
        forceShare,
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
