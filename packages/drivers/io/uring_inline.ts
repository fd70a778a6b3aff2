/**
 * The io_uring engine's inline page-cache writes: when a small buffered write runs on the JS
 * thread with `pwritev` instead of going through the ring, and the write itself. io_uring
 * hands buffered writes that cannot be done without blocking (ext4, for one) to its io-wq
 * workers, a thread hand-off each way around a copy of a few microseconds; `uring_tuning.ts`
 * (`SYNC_WRITES`) has the measurements.
 *
 * @module
 */

import { BlockError, errnoCode, strerror } from "@blockgraph/core";
import { DirtyHeadroom } from "./dirty_headroom.ts";
import { lastErrno, libc } from "./libc.ts";
import { sinceTurn } from "./loop_turn.ts";
import { SYNC_COOL_MS, SYNC_SLOW_MS, uringTuning } from "./uring_tuning.ts";

/** {@link InlineWrites.when}'s answers: through the ring, here, here after a loop turn. */
export const INLINE_NEVER = 0;
export const INLINE_NOW = 1;
export const INLINE_AFTER_TURN = 2;

/** The inline-write policy of one engine, and the requests in its ring that it waits for. */
export class InlineWrites {
  /** Page-cache writes, fallocates and flushes in the ring (they may hold the inode lock). */
  #inRing = 0;
  #offUntil = 0;
  /** The clock reading of the last {@link InlineWrites.when}: the start of the write after it. */
  #checkedAt = 0;
  readonly #headroom = new DirtyHeadroom();

  /** Whether a buffered write of `bytes` with these RWF flags may ever run inline. */
  candidate(bytes: number, rwFlags: number): boolean {
    return rwFlags === 0 && uringTuning.syncWrites && bytes <= uringTuning.syncBytes;
  }

  /**
   * Whether a candidate runs here: not while a write, fallocate or flush is in the ring (it
   * may hold the inode lock the write needs), nor for a while after a slow one, nor while the
   * host's dirty memory is near the kernel's throttling level; and once the chain has kept the
   * event loop for `syncBudgetMs`, after the loop has turned.
   */
  when(): number {
    if (this.#inRing > 0) return INLINE_NEVER;
    const now = performance.now();
    this.#checkedAt = now;
    if (now < this.#offUntil || !this.#headroom.ok(now)) return INLINE_NEVER;
    return sinceTurn(now) < uringTuning.syncBudgetMs ? INLINE_NOW : INLINE_AFTER_TURN;
  }

  /** A request that may hold the inode lock entered the ring... */
  entered(): void {
    this.#inRing++;
  }

  /** ...and left it. */
  left(): void {
    this.#inRing--;
  }

  /**
   * Writes the first `count` iovecs of `iov` (native memory) to `fd` at `offset` with
   * pwritev; a write slower than `SYNC_SLOW_MS` sends the next ones to the ring for
   * `SYNC_COOL_MS`. Called right after {@link InlineWrites.when} answered INLINE_NOW: its clock
   * reading is the start time, so a write reads the clock once rather than twice.
   */
  write(fd: number, iov: Uint8Array, count: number, offset: number): Promise<number> {
    const t0 = this.#checkedAt;
    // The offset as a BigInt, as the fast call wants it (see `pwritev` in `libc.ts`).
    const rc = libc().pwritev(fd, iov, count, BigInt(offset));
    const errno = rc < 0 ? lastErrno() : 0;
    const t1 = performance.now();
    if (t1 - t0 > SYNC_SLOW_MS) this.#offUntil = t1 + SYNC_COOL_MS;
    if (rc >= 0) return Promise.resolve(rc);
    const code = errnoCode(errno);
    return Promise.reject(
      new BlockError(code, `pwritev at offset ${offset}: ${strerror(code)}`, {
        offset,
        op: "write",
      }),
    );
  }
}
