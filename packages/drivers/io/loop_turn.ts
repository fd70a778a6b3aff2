/**
 * How long the JavaScript thread has gone without letting Deno's event loop turn, and a cheap
 * way to let it turn.
 *
 * Requests that complete without waiting (`null-co`, `memory`, page-cache hits inside
 * `io_uring_enter`) resolve in microtasks. A caller that issues the next request when one
 * completes (a benchmark loop, `img convert`, a job, an NBD connection with pipelined
 * requests) then never returns to the event loop, and timers, sockets and the monitor starve:
 * a 10 ms timer ran about 100 ms late at p99 under `null-co` at depth 32. Drivers whose
 * requests can complete that way ask {@link yieldDue} per request and, when it says so,
 * complete through {@link nextTurn}: one turn of the loop every {@link TURN_BUDGET_MS}.
 *
 * What counts as a turn was measured (a 0.5 ms busy chain of hops for 100 ms, a TCP ping-pong
 * beside it): `setImmediate` and `MessageChannel` hops cost about 2 µs but let no socket I/O
 * through (0–1 round trips); a zero `setTimeout` lets I/O through but idles about 1 ms a hop
 * (Deno's timers have millisecond resolution, and nested ones are clamped); a nonblocking
 * FFI call (`getpid` on a pool thread) costs about 30–60 µs and lets both through. So the hop
 * is the FFI call. The marker that sees a turn was a zero timeout, which runs only when the
 * loop has really polled; it is now an `Atomics.waitAsync` that times out at once, which V8
 * ends from a task the loop runs once a turn (see `armMarker`): the flood test below it
 * (`loop_turn_test.ts`) gives the same timer ticks and round trips with either, and a cold
 * `img convert` spent about 8 ms of its JavaScript thread arming and firing the timeouts.
 *
 * {@link zeroTimeout} (the CLI's output flush, events sent after a reply, a turn that must
 * let timers run) starts as `AbortSignal.timeout(0)` and becomes `setTimeout` once the process
 * has armed {@link CHEAP_LOAD_TIMEOUTS} of them. In Deno 2.9 the global `setTimeout` is Node's:
 * its first call loads Node's timers and what they import, 6-8 ms of a command's start-up,
 * where `AbortSignal.timeout` loads in about 2.5 ms; but each AbortSignal timeout costs about
 * 4 µs more when it fires (it makes a DOMException for its reason): arm and fire 5.5 µs
 * against 2.5 µs. A short command (`img info`) then never loads Node's timers, and a long run
 * (a daemon) pays the load once for the cheaper timer. Either keeps the process alive until
 * it runs, which for a zero timeout is the next turn; the marker does not.
 *
 * @module
 */

import { libc } from "./libc.ts";

/** The longest a chain of instantly completing requests keeps the event loop from running (ms). */
export const TURN_BUDGET_MS = 2;

/** Calls of {@link yieldDue} between clock reads (a power of two). */
const CHECK_EVERY = 64;

let armed = false;
let armedAt = 0;
let chainStart = 0;
let calls = 0;
const onTurn = (): void => {
  armed = false;
};

/** The cell the marker waits on; it never changes, so every wait ends by timing out. */
const markerCell = new Int32Array(new SharedArrayBuffer(4));

/**
 * Arms the marker: `Atomics.waitAsync` with a timeout of a nanosecond, which V8 ends from a
 * task the event loop runs at its next turn (never inside a chain of microtasks), at about
 * 4 µs against 10-13 µs for an `AbortSignal` timeout and 7 µs for `setTimeout`, and without
 * loading Node's timers. A chain arms one; an `img convert` arms about 200.
 */
function armMarker(): void {
  const r = Atomics.waitAsync(markerCell, 0, 0, 1e-6);
  if (r.async) r.value.then(onTurn);
  else zeroTimeout(onTurn);
}

/** Zero timeouts made with `AbortSignal.timeout` before `setTimeout` takes over (see above). */
const CHEAP_LOAD_TIMEOUTS = 256;
let timeouts = 0;

/**
 * Calls `then` once timers next run (see above for which timer), without loading Node's timers
 * at a short command's start: the CLI's buffered standard output flushes through it. It
 * cannot be cancelled; a caller that no longer needs the call ignores it.
 */
export function zeroTimeout(then: () => void): void {
  if (timeouts < CHEAP_LOAD_TIMEOUTS) {
    timeouts++;
    AbortSignal.timeout(0).addEventListener("abort", then);
  } else {
    setTimeout(then, 0);
  }
}

/**
 * Milliseconds since the event loop last turned, as far as this module knows: 0 at the first
 * call after a turn (which arms the marker), growing until the loop polls again.
 */
export function sinceTurn(now: number = performance.now()): number {
  if (!armed) {
    chainStart = now;
    armedAt = now;
    armed = true;
    armMarker();
  }
  return now - chainStart;
}

/**
 * Records that the event loop has just turned (a macrotask is running: a nonblocking FFI call
 * coming back, a socket read), so the chain starts now without waiting for the marker.
 */
export function markTurn(now: number = performance.now()): void {
  chainStart = now;
}

/**
 * Whether the current chain has kept the event loop from running for longer than
 * {@link TURN_BUDGET_MS}. Cheap enough for every request: the clock is read once in every
 * {@link CHECK_EVERY} calls.
 */
export function yieldDue(): boolean {
  // Once a turn is due every request waits for it: one chain left running keeps the
  // microtask queue from emptying, and the loop from turning at all.
  if (pending !== null) return true;
  if ((++calls & (CHECK_EVERY - 1)) !== 0) return false;
  return sinceTurn() >= TURN_BUDGET_MS;
}

/** How long the marker timer may be overdue before a turn goes through the timers (ms). */
export const TIMER_STARVED_MS = 8;

let hop: (() => Promise<unknown>) | null = null;
const timerHop = () => new Promise<void>(zeroTimeout);
let pending: Promise<void> | null = null;
const afterHop = (): void => {
  pending = null;
  markTurn();
};

/**
 * Whether timers have been kept from running for longer than {@link TIMER_STARVED_MS}: the
 * marker timer armed at the start of the chain has not run. A wait on a pool thread (a
 * nonblocking FFI call) lets socket I/O through but not always timers: Deno runs them only
 * when its loop finds nothing else ready, so a caller that hops that way should go through
 * {@link nextTurn} instead while this holds.
 */
export function timersStarved(now: number = performance.now()): boolean {
  return armed && now - armedAt > TIMER_STARVED_MS;
}

/**
 * A promise that resolves after the event loop has turned once (timers and I/O included); the
 * callers waiting meanwhile share it.
 */
export function nextTurn(): Promise<void> {
  if (pending !== null) return pending;
  if (hop === null) {
    try {
      const turn = libc().turn;
      hop = () => turn();
    } catch {
      // No FFI here: a zero timeout turns the loop too, idling about a millisecond.
      hop = timerHop;
    }
  }
  pending = (timersStarved() ? timerHop() : hop()).then(afterHop);
  return pending;
}
