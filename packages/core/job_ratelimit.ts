/**
 * Rate limiting for jobs with a `speed`: QEMU's time-slice token bucket (`ratelimit.h`).
 * Each slice allows `speed × slice` bytes; work beyond that stretches the slice and the job
 * sleeps until it ends.
 *
 * @module
 */

/** The length of one accounting slice for block jobs, in nanoseconds (100 ms). */
export const JOB_SLICE_NS = 100_000_000;

/** A clock in nanoseconds. */
export type NsClock = () => number;

const realtimeNs: NsClock = () => performance.now() * 1e6;

/**
 * A token bucket over time slices.
 *
 * @example
 * ```ts
 * import { RateLimit } from "@blockgraph/core";
 * let now = 1_000;
 * const limit = new RateLimit(() => now);
 * limit.setSpeed(1_000_000, 100_000_000); // 1 MB/s: 100 kB per 100 ms slice
 * console.assert(limit.calculateDelay(50_000) === 0);
 * console.assert(limit.calculateDelay(100_000) === 150_000_000); // 150 kB take 150 ms
 * now += 150_000_000;
 * console.assert(limit.calculateDelay(0) === 0);
 * ```
 */
export class RateLimit {
  #sliceStart = 0;
  #sliceEnd = 0;
  #sliceQuota = 0;
  #sliceNs = JOB_SLICE_NS;
  #dispatched = 0;
  readonly #now: NsClock;

  /** Creates an unlimited bucket; `now` is the clock (real time by default). */
  constructor(now: NsClock = realtimeNs) {
    this.#now = now;
  }

  /** Sets the speed in bytes per second (0: unlimited) and the slice length. */
  setSpeed(speed: number, sliceNs: number = JOB_SLICE_NS): void {
    this.#sliceNs = sliceNs;
    this.#sliceQuota = speed === 0 ? 0 : Math.max((speed * sliceNs) / 1e9, 1);
  }

  /**
   * Accounts `n` more bytes and returns how many nanoseconds to wait before going on
   * (0 while the slice's quota is not used up). `n = 0` asks for the remaining wait.
   */
  calculateDelay(n: number): number {
    if (!this.#sliceQuota) return 0;
    const now = this.#now();
    if (this.#sliceEnd < now) {
      // The previous (possibly stretched) slice is over: start a fresh one.
      this.#sliceStart = now;
      this.#sliceEnd = now + this.#sliceNs;
      this.#dispatched = 0;
    }
    this.#dispatched += n;
    if (this.#dispatched < this.#sliceQuota) return 0;
    const slices = this.#dispatched / this.#sliceQuota;
    this.#sliceEnd = this.#sliceStart + Math.floor(slices * this.#sliceNs);
    return this.#sliceEnd - now;
  }
}
