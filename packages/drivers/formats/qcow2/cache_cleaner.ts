/**
 * The `cache-clean-interval` timer of an image (QEMU's `cache_clean_timer`): every interval,
 * under the metadata lock, the clean L2 tables and refcount blocks nobody used since the
 * previous tick are dropped, so an idle image gives its cache memory back.
 *
 * QEMU arms the timer at open; ours is armed when the first table or block is loaded into a
 * cache ({@link CacheCleaner.wake}), as ticks before then have nothing to drop. The first
 * timer a process arms loads Deno's Node timers (about 7 ms), which a short command that
 * never loads one (`img info`) then does not pay.
 *
 * @module
 */

import type { Mutex } from "./locks.ts";

/** A cache the cleaner can empty of entries unused since the previous call. */
export interface CleanableCache {
  /** Drops the clean entries not used since the previous call; returns how many. */
  cleanUnused(): number;
}

/** The longest delay a timer takes, in milliseconds. */
const MAX_TIMER_MS = 2 ** 31 - 1;

/** The cleaning timer of one image's caches. */
export class CacheCleaner {
  readonly #lock: Mutex;
  readonly #caches: () => readonly CleanableCache[];
  #interval = 0;
  /** Whether a cache has loaded anything: the timer runs from then on (see above). */
  #woken = false;
  /** The image is closing: the timer is never armed again. */
  #disposed = false;
  #timer: ReturnType<typeof setTimeout> | undefined;
  #cleaning: Promise<void> | null = null;

  /** A stopped cleaner of `caches()` (asked at each tick), taking `lock` for each tick. */
  constructor(lock: Mutex, caches: () => readonly CleanableCache[]) {
    this.#lock = lock;
    this.#caches = caches;
  }

  /** Seconds between cleanings (0: none). */
  get interval(): number {
    return this.#interval;
  }

  /** Cleans every `seconds` (0: never); the timer restarts only when the interval changes. */
  setInterval(seconds: number): void {
    if (seconds !== this.#interval) {
      this.stop();
      this.#interval = seconds;
    }
    if (this.#woken && !this.#disposed && this.#interval > 0 && this.#timer === undefined) {
      this.#arm(this.#interval * 1000);
    }
  }

  /** Records that a cache has loaded a table or block, and arms the timer the first time. */
  wake(): void {
    if (this.#woken) return;
    this.#woken = true;
    this.setInterval(this.#interval);
  }

  /**
   * Stops the timer for good (the image is closing): loads the close itself makes (storing
   * bitmaps, writing caches back) arm nothing.
   */
  dispose(): void {
    this.#disposed = true;
    this.stop();
  }

  /** Stops the timer (a reopen that changes the interval; {@link CacheCleaner.dispose}). */
  stop(): void {
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  /**
   * One tick (QEMU's `cache_clean_timer_cb`): under the lock, drops what no one used since
   * the previous tick. A tick that finds the previous one still waiting for the lock joins it.
   */
  clean(): Promise<void> {
    return this.#cleaning ??= this.#lock.run(() => {
      for (const c of this.#caches()) c.cleanUnused();
      return Promise.resolve();
    }).finally(() => (this.#cleaning = null));
  }

  /** Ticks every interval, `ms` from now first. */
  #arm(ms: number): void {
    // Timers take at most 2^31 - 1 ms; a longer interval waits in steps.
    const step = Math.min(ms, MAX_TIMER_MS);
    const timer = setTimeout(() => {
      if (ms > step) return this.#arm(ms - step);
      this.#arm(this.#interval * 1000);
      this.clean().catch(() => {});
    }, step);
    // The timer alone does not keep the process running.
    Deno.unrefTimer(timer);
    this.#timer = timer;
  }
}
