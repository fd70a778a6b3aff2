/**
 * The request loop of `img bench`: `depth` requests in flight through a Backend, offsets
 * advancing by `step` modulo the image size, flushes every `flushInterval` requests (after
 * draining the queue unless told not to), as qemu-img 7.2's bench does. Buffers, vectors and
 * completion handlers are made once per run; a request allocates nothing of its own beyond
 * the Promise the Backend returns.
 *
 * @module
 */

import { type Backend, BlockError, IoVector } from "@blockgraph/core";
import { allocateIoMemory } from "@blockgraph/drivers";

/** What one run does. */
export interface BenchParams {
  /** How many requests (`-c`). */
  readonly count: number;
  /** How many in flight at once (`-d`). */
  readonly depth: number;
  /** Bytes per request (`-s`). */
  readonly size: number;
  /** The distance between the offsets of consecutive requests (`-S`; 0 means `size`). */
  readonly step: number;
  /** The offset of the first request (`-o`). */
  readonly offset: number;
  /** Write instead of read (`-w`). */
  readonly write: boolean;
  /** The byte the buffers are filled with (`--pattern`). */
  readonly pattern: number;
  /** Flush after every this many requests; 0 for never (`--flush-interval`). */
  readonly flushInterval: number;
  /** Wait for the queue to empty before each flush (cleared by `--no-drain`). */
  readonly drainOnFlush: boolean;
}

/** What one run measured. */
export interface BenchResult {
  /** Wall time from the first submission to the last completion, in seconds. */
  readonly seconds: number;
  /** Process CPU time (user) over the same window, in microseconds. */
  readonly cpuUserMicros: number;
  /** Process CPU time (system) over the same window, in microseconds. */
  readonly cpuSystemMicros: number;
}

/** Why a run stopped early: the failed request's error, and whether it was a flush. */
export class BenchRequestError extends Error {
  /** The Backend's error. */
  readonly error: BlockError;
  /** Whether an undrained flush failed (qemu-img words that one differently). */
  readonly flush: boolean;

  /** Wraps the error of a failed request. */
  constructor(error: BlockError, flush: boolean) {
    super(error.message, { cause: error });
    this.name = "BenchRequestError";
    this.error = error;
    this.flush = flush;
  }
}

/** Process CPU time so far, user and system, in microseconds. */
export function processCpu(): { user: number; system: number } {
  const d = Deno as unknown as { cpuUsage?: () => { user: number; system: number } };
  if (d.cpuUsage) return d.cpuUsage();
  // Fields 14 and 15 of /proc/self/stat, in clock ticks (100 per second on Linux).
  const stat = Deno.readTextFileSync("/proc/self/stat");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return { user: Number(fields[11]) * 10_000, system: Number(fields[12]) * 10_000 };
}

/**
 * Runs the requests `params` describe against `backend`. Resolves when every request has
 * completed (a final flush, when one is due, is awaited but not timed, as qemu-img stops its
 * clock when the last request completes). Rejects with {@link BenchRequestError} after the
 * first failure, once nothing is left in flight.
 */
export function runBench(backend: Backend, params: BenchParams): Promise<BenchResult> {
  const { depth, size, write, flushInterval, drainOnFlush } = params;
  if (depth < 1 && params.count > 0) {
    return Promise.reject(new RangeError(`Bench depth must be at least 1, not ${depth}`));
  }
  const step = params.step || size;
  const imageSize = backend.getLength();
  const align = backend.node?.limits.memAlignment ?? 1;
  // Native memory aligned for direct I/O (qemu-img's blk_blockalign), in huge pages when large.
  const io = allocateIoMemory(depth * size, Math.max(align, 4096));
  const memory = io.bytes;
  memory.fill(params.pattern);
  const vectors: IoVector[] = [];
  for (let i = 0; i < depth; i++) {
    vectors.push(IoVector.of(memory.subarray(i * size, (i + 1) * size)));
  }
  const free: number[] = [];
  for (let i = depth - 1; i >= 0; i--) free.push(i);

  let n = params.count;
  let inFlight = 0;
  let inFlush = false;
  let offset = params.offset;
  let failure: BenchRequestError | null = null;
  let pendingFlush: Promise<void> | null = null;
  let startWall = 0;
  let startCpu = { user: 0, system: 0 };
  let resolveRun!: (r: BenchResult) => void;
  let rejectRun!: (e: unknown) => void;
  const done = new Promise<BenchResult>((resolve, reject) => {
    resolveRun = resolve;
    rejectRun = reject;
  });

  const finish = (): void => {
    const seconds = (performance.now() - startWall) / 1000;
    const cpu = processCpu();
    const result: BenchResult = {
      seconds,
      cpuUserMicros: cpu.user - startCpu.user,
      cpuSystemMicros: cpu.system - startCpu.system,
    };
    if (pendingFlush) pendingFlush.then(() => resolveRun(result), rejectRun);
    else resolveRun(result);
  };

  const fail = (e: unknown, flush: boolean): void => {
    failure ??= new BenchRequestError(BlockError.from(e), flush);
    if (inFlight === 0 && !inFlush) rejectRun(failure);
  };

  const submit = (): void => {
    while (failure === null && n > inFlight && inFlight < depth) {
      const slot = free.pop()!;
      const at = offset;
      inFlight++;
      offset = imageSize === 0 ? 0 : (offset + step) % imageSize;
      const request = write
        ? backend.pwritev(at, size, vectors[slot]!, 0, 0)
        : backend.preadv(at, size, vectors[slot]!, 0, 0);
      request.then(completions[slot]!, failures[slot]!);
    }
  };

  const flushDone = (): void => {
    inFlush = false;
    if (failure !== null) {
      if (inFlight === 0) rejectRun(failure);
      return;
    }
    if (n === 0) return;
    submit();
  };

  const complete = (slot: number): void => {
    free.push(slot);
    const remaining = n - inFlight;
    n--;
    inFlight--;
    if (failure !== null) {
      if (inFlight === 0 && !inFlush) rejectRun(failure);
      return;
    }
    if (flushInterval && remaining % flushInterval === 0) {
      if (inFlight === 0 || !drainOnFlush) {
        const flush = backend.flush();
        if (drainOnFlush) {
          inFlush = true;
          const tracked = flush.then(flushDone, (e) => {
            inFlush = false;
            fail(e, false);
          });
          if (n === 0) pendingFlush = tracked;
        } else {
          const tracked = flush.catch((e) => fail(e, true));
          if (n === 0) pendingFlush = tracked;
        }
      }
      if (drainOnFlush) {
        if (n === 0) finish();
        return;
      }
    }
    if (n === 0) {
      finish();
      return;
    }
    submit();
  };

  const completions: (() => void)[] = [];
  const failures: ((e: unknown) => void)[] = [];
  for (let i = 0; i < depth; i++) {
    completions.push(() => complete(i));
    failures.push((e) => {
      free.push(i);
      n--;
      inFlight--;
      fail(e, false);
    });
  }

  startCpu = processCpu();
  startWall = performance.now();
  if (n === 0) finish();
  else submit();
  return done.finally(() => io.release());
}
