/**
 * Block status through a backing chain: what a reader of the top node finds where, and which
 * layer holds it (QEMU's `bdrv_block_status_above` and `bdrv_is_allocated_above`).
 *
 * @module
 */

import { type BlockStatus, BlockStatusFlags } from "./driver.ts";
import { blockStatusNow, promised } from "./block_status.ts";
import type { Node } from "./node.ts";

/** The chain's answer for a range: the answering layer's status, and which layer that is. */
export interface ChainStatus extends BlockStatus {
  /** How many layers below the top answered (0: the top itself). */
  depth: number;
  /** The layer that answered. */
  node: Node;
}

const { ALLOCATED, EOF, ZERO } = BlockStatusFlags;

/**
 * The status of `[offset, offset+bytes)` as read through `top` and the layers below it down
 * to `base` (exclusive; `null`: the whole chain): the answer of the first layer that holds
 * the range, or of the bottom one; past a lower layer's end, zeros that layer holds; EOF
 * only for the end of `top`. `pnum` may be shorter than asked: the answer's bytes.
 */
export function blockStatusAbove(
  top: Node,
  base: Node | null,
  offset: number,
  bytes: number,
  wantZero = true,
): Promise<ChainStatus> {
  return promised(() => blockStatusAboveNow(top, base, offset, bytes, wantZero));
}

/**
 * {@link blockStatusAbove} at once when every layer it asks has the answer at hand, else its
 * promise (see {@link Node.blockStatusNow}); throws what it finds wrong at once.
 */
export function blockStatusAboveNow(
  top: Node,
  base: Node | null,
  offset: number,
  bytes: number,
  wantZero = true,
): ChainStatus | Promise<ChainStatus> {
  const st = blockStatusNow(top, offset, bytes, wantZero);
  return st instanceof Promise
    ? st.then((s) => statusBelow(top, base, offset, s, wantZero))
    : statusBelow(top, base, offset, st, wantZero);
}

/**
 * {@link blockStatusAboveNow} from `top`'s own answer `st` at `offset`, for a caller that
 * asked the top itself (a Backend, with its own checks and accounting).
 */
export function statusBelow(
  top: Node,
  base: Node | null,
  offset: number,
  st: BlockStatus,
  wantZero = true,
): ChainStatus | Promise<ChainStatus> {
  // The top's end, where the chain's answer ends too; lower layers' ends do not count.
  const eof = st.status & EOF ? offset + st.pnum : -1;
  return walk(top, base, offset, eof, 0, st, wantZero);
}

/** From layer `n` (`depth` below the top), which answered `st`, down to the first holder. */
function walk(
  n: Node,
  base: Node | null,
  offset: number,
  eof: number,
  depth: number,
  st: BlockStatus,
  wantZero: boolean,
): ChainStatus | Promise<ChainStatus> {
  for (;;) {
    if (st.status & ALLOCATED || st.pnum === 0) return answer(n, depth, offset, eof, st);
    const p = n === base ? null : n.layerBelow;
    if (!p || p === base) return answer(n, depth, offset, eof, st);
    const len = p.getLength();
    // Past a short layer's end its zeros show, as if that layer held them.
    if (offset >= len) {
      return answer(p, depth + 1, offset, eof, { status: ZERO | ALLOCATED, pnum: st.pnum });
    }
    const next = blockStatusNow(p, offset, Math.min(st.pnum, len - offset), wantZero);
    if (next instanceof Promise) {
      const d = depth + 1;
      return next.then((s) => walk(p, base, offset, eof, d, s, wantZero));
    }
    n = p;
    depth++;
    st = next;
  }
}

/**
 * `st`, layer `n`'s answer, as the chain's: EOF only where the top ends. The answer is the
 * driver's own object, completed in place (each block status call makes its own, and the
 * generic layer sets bits in it already): a walk over many extents allocates nothing more.
 */
function answer(
  n: Node,
  depth: number,
  offset: number,
  eof: number,
  st: BlockStatus,
): ChainStatus {
  const r = st as ChainStatus;
  r.status = offset + st.pnum === eof ? st.status | EOF : st.status & ~EOF;
  r.depth = depth;
  r.node = n;
  return r;
}

/**
 * Whether `[offset, offset+bytes)` reads as zeros through `top` and everything below it, as
 * far as block status (looking for zeros) can tell: QEMU's `is_zero`, which a format asks
 * before it turns a partly written range into zeros wholesale. The range is clamped to
 * `top`'s length.
 */
export async function isZeroAbove(top: Node, offset: number, bytes: number): Promise<boolean> {
  bytes = Math.max(0, Math.min(bytes, top.getLength() - offset));
  while (bytes > 0) {
    const now = blockStatusAboveNow(top, null, offset, bytes, true);
    const st = now instanceof Promise ? await now : now;
    if (!(st.status & ZERO) || st.pnum === 0) return false;
    offset += st.pnum;
    bytes -= st.pnum;
  }
  return true;
}

/**
 * Whether `[offset, offset+bytes)` is allocated in `top` or any backing layer above `base`
 * (exclusive; `null`: the whole chain). Returns the answer for the first `pnum` bytes.
 */
export async function isAllocatedAbove(
  top: Node,
  base: Node | null,
  offset: number,
  bytes: number,
): Promise<{ allocated: boolean; pnum: number; depth: number }> {
  let pnum = bytes;
  let depth = 0;
  for (let n: Node | null = top; n && n !== base; n = n.layerBelow) {
    const len = n.getLength();
    if (offset >= len) {
      // Past the end of the top there is nothing; past a lower layer's end the zeros it reads
      // are that layer's answer, and nothing below shows through it.
      if (n === top) return { allocated: false, pnum: bytes, depth: 0 };
      return { allocated: true, pnum, depth: depth + 1 };
    }
    // A layer that answers at once (a cached L2 table, raw) is not waited for.
    const now = blockStatusNow(n, offset, Math.min(pnum, len - offset), false);
    const st = now instanceof Promise ? await now : now;
    if (st.status & ALLOCATED) {
      return { allocated: true, pnum: st.pnum, depth: depth + 1 };
    }
    pnum = Math.min(pnum, st.pnum);
    depth++;
  }
  return { allocated: false, pnum, depth: 0 };
}
