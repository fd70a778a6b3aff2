/**
 * The running side of a job: whether its `run()` is busy, and the one place it waits (a
 * pause point, a sleep, a suspend) until something enters it again. QEMU runs a job in a
 * coroutine; here `run()` is an async function and a wait is a promise only
 * {@link JobCoroutine.enter} (or the sleep timer) resolves.
 *
 * @module
 */

/** Whether a job's `run()` executes or waits, and how to wake it. */
export class JobCoroutine {
  #busy = false;
  #started = false;
  #deferred = false;
  #wake: (() => void) | null = null;
  #timer: ReturnType<typeof setTimeout> | undefined;
  readonly #onIdle: () => void;

  /** `onIdle` runs whenever the job stops being busy (drain re-checks then). */
  constructor(onIdle: () => void) {
    this.#onIdle = onIdle;
  }

  /** Whether `run()` is executing (not waiting to be entered). */
  get busy(): boolean {
    return this.#busy;
  }

  /** Whether `run()` was started. */
  get started(): boolean {
    return this.#started;
  }

  /** Whether `run()` has returned and completion was handed to the main flow. */
  get deferred(): boolean {
    return this.#deferred;
  }

  /** Whether the job waits on a sleep timer. */
  get sleeping(): boolean {
    return this.#timer !== undefined;
  }

  /** Marks `run()` as started and busy. */
  start(): void {
    this.#started = true;
    this.#busy = true;
  }

  /** Marks `run()` as returned: nothing enters the job any more. */
  finish(): void {
    this.#deferred = true;
    this.#busy = false;
    this.#onIdle();
  }

  /** Waits until entered, or until `ms` milliseconds passed when `ms` is not null. */
  yield(ms: number | null): Promise<void> {
    return new Promise((resolve) => {
      this.#wake = resolve;
      if (ms !== null) {
        this.#timer = setTimeout(() => {
          this.#timer = undefined;
          this.enter();
        }, ms);
      }
      this.#busy = false;
      this.#onIdle();
    });
  }

  /** Wakes the job if it waits (and `cond`, when given, holds); cancels a sleep timer. */
  enter(cond?: () => boolean): void {
    if (!this.#started || this.#deferred || this.#busy) return;
    if (cond && !cond()) return;
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#busy = true;
    const wake = this.#wake;
    this.#wake = null;
    wake?.();
  }
}
