/**
 * The `cache-clean-interval` timer of an image (QEMU's `cache_clean_timer`): every interval,
 * under the metadata lock, the clean L2 tables and refcount blocks nobody used since the
 * previous tick are dropped, so an idle image gives its cache memory back.
 *
 * QEMU arms the timer at open; ours is armed when the first table or block is loaded into a
 * cache ({@link CacheCleaner.wake}), as ticks before then have nothing to drop.
 *
 * The timer is not `setTimeout`: in Deno 2.9 that is Node's, and the first call in a process
 * loads Node's timers, 7-9 ms on the JavaScript thread of a cold command (it was the largest
 * single cost of an `img convert` to qcow2 after the copy, as the target's first refcount
 * block loads). It is `Atomics.waitAsync` on a cell of the cleaner's own with the interval as
 * its timeout: no module to load, about 4 µs to arm, and like an unref'd timer it does not
 * keep the process running. Stopping wakes the wait (`Atomics.notify`), and a tick checks
 * that it still belongs to the current arming.
 *
 * @module
 */

import type { Mutex } from "./locks.ts";

/** A cache the cleaner can empty of entries unused since the previous call. */
export interface CleanableCache {
  /** Drops the clean entries not used since the previous call; returns how many. */
  cleanUnused(): number;
}

/** The cleaning timer of one image's caches. */
export class CacheCleaner {
  readonly #lock: Mutex;
  readonly #caches: () => readonly CleanableCache[];
  #interval = 0;
  /** Whether a cache has loaded anything: the timer runs from then on (see above). */
  #woken = false;
  /** The image is closing: the timer is never armed again. */
  #disposed = false;
  /** The cell the timer waits on; a stop notifies it. */
  readonly #cell = new Int32Array(new SharedArrayBuffer(4));
  /** Counts armings: a wait that ends belongs to the current one or is ignored. */
  #armed = 0;
  #running = false;
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
    if (this.#woken && !this.#disposed && this.#interval > 0 && !this.#running) {
      this.#running = true;
      this.#arm();
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
    if (!this.#running) return;
    this.#running = false;
    this.#armed++;
    Atomics.notify(this.#cell, 0);
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

  /** Ticks once an interval from now, then again every interval until stopped. */
  #arm(): void {
    const mine = ++this.#armed;
    const r = Atomics.waitAsync(this.#cell, 0, 0, this.#interval * 1000);
    // The cell never changes, so the wait is always asynchronous (a zero interval never arms).
    if (!r.async) return;
    r.value.then(() => {
      if (mine !== this.#armed) return;
      this.#arm();
      this.clean().catch(() => {});
    });
  }
}
