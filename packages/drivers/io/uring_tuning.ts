/**
 * The io_uring engine's policies and their measurements: when it spins, when the JS thread
 * waits in the kernel, how often it submits, which page-cache requests go to io-wq, and how
 * long it may keep the event loop; and {@link uringTuning}, the switches side-by-side
 * benchmarks flip. The engine itself is `uring.ts`.
 *
 * @module
 */

/**
 * Spin on the CQ only while at most this many requests are in flight. At depth 1 spinning is
 * a trade: 4 KiB O_DIRECT random reads beside fio, medians of 5: spinning 1.05–1.21x fio's
 * IOPS at 1.7–2.0x its CPU per request; waiting in the kernel instead (timed wait, no spin)
 * 0.85x at 1.49x; hybrid polling (sleeping 50% or 70% of the usual wait, then spinning)
 * 0.67x / 0.87x at 2.0x / 1.75x, as a timer wake-up costs more than the spin it saves.
 */
const SPIN_DEPTH = 2;
/** How long one spin may last (ms) before falling back to a nonblocking wait. */
const SPIN_MS = 0.25;
/** The longest the engine keeps the event loop from running by spinning (ms). */
export const YIELD_MS = 2;

/**
 * Deeper than SPIN_DEPTH, the JS thread waits in the kernel for the next completion for at
 * most this long (µs; io_uring_enter with a timeout) before handing the wait to a pool thread:
 * it sleeps rather than spins, and wakes without a cross-thread hand-off (about 15 µs each
 * way here). 4 KiB random reads at depth 32, O_DIRECT, medians of 5 alternating rounds beside
 * fio: pool-thread waits 0.79–0.94x fio at 1.40–1.46x its CPU per request; 1000 µs waits
 * 0.87–1.06x at 1.15–1.21x; 200–500 µs in between. A wait that times out means a slow device:
 * then the pool thread waits for TIMED_COOL_MS (qcow2 4 KiB random reads at depth 32: a
 * 100 ms cool-down cost 5–10% of IOPS, as latency spikes of a virtual disk trip it). The
 * chain budget (YIELD_MS) still bounds how long the event loop is kept.
 */
const TIMED_WAIT_US = 1000;
/**
 * A timed wait returns once this share of the requests in flight has completed (at least
 * one), so each wake-up reaps a batch: 4 KiB O_DIRECT at depth 32, medians of 5 beside fio,
 * reads 0.905x -> 0.921x fio at 1.24x -> 1.17x its CPU, writes 0.92x -> 0.96x at 1.16x ->
 * 1.14x (one completion, against a quarter); an eighth did no better than one.
 */
const TIMED_MIN_FRACTION = 0.25;
/** How long (ms) after a timed wait expired the engine waits on the pool thread only. */
const TIMED_COOL_MS = 10;

/**
 * Submit as soon as this many SQEs are queued rather than once per microtask round: the
 * device queue stays staggered (4 KiB random reads at depth 32, medians of 5 alternating
 * rounds against fio: one enter per round 0.76x fio, per 4 SQEs 0.92x, per 2 SQEs 0.96x).
 * Against `qemu-img bench` on a qcow2 (session 17, 8 alternating rounds of 100k 4 KiB
 * O_DIRECT reads at depth 32): per 2 SQEs 0.916-0.929x, per SQE 0.938-0.944x, per 4 0.912x,
 * once per round 0.79x; reaping a half instead of a quarter 0.912x. qemu-img makes one
 * io_uring_enter per request and waits (ppoll) about 6k times in 100k requests; the device
 * is the limit here (qemu-img's own rate moves within noise from depth 16 to 48).
 */
const SUBMIT_BATCH = 2;
/**
 * Page-cache requests of at least this many bytes are "large": the engine does not spin while
 * any is in flight (a copy of one takes far longer than a spin lasts). They are no longer
 * forced to io-wq (IOSQE_ASYNC): the kernel tries each inline with NOWAIT and hands a buffered
 * write that would block to io-wq itself. History: forcing large writes and reads to io-wq took
 * `img convert` (1 GiB half-allocated, page cache, 8 x 1 MiB in flight, medians of 9
 * alternating runs beside qemu-img convert) from 0.69x to 0.80x; after the I/O buffers moved
 * to huge pages, reads went back inline (nbdcopy unix 0.70x -> 0.80-0.84x qemu-nbd, TCP
 * 0.83-0.85x -> 0.77-0.79x nbdkit). Measured again with huge pages, forcing writes cost time:
 * qcow2->raw 178 -> 132 ms (qemu-img 159 ms), raw->qcow2 174 -> 127 ms (qemu-img 144 ms);
 * `img bench -w -s 1M -d 8 -t writeback` overwriting a raw file 11.0-11.1k -> 12.2-12.7k IOPS
 * at 128-135 -> 116-120 µs CPU per request. perf showed the forced writes' io-wq workers
 * spinning on the inode's rwsem (4% of samples), which the kernel's own hand-off avoids.
 *
 * Large page-cache reads go to io-wq (IOSQE_ASYNC) while no large write is in flight
 * (`asyncReads: "auto"`): a process that only reads big (an NBD export serving nbdcopy) then
 * copies from the page cache on an io-wq worker while the JS thread copies into sockets, one
 * core each; one that reads and writes big (`img convert`) keeps its reads inline, the writes
 * already keeping io-wq busy. nbdcopy of a 1 GiB export over TCP, fresh daemon per run,
 * alternating: 0.57-0.64 s inline, 0.47-0.51 s with "auto" (the bench case 0.78x -> 0.77x
 * nbdkit in one run, 1.9k -> 1.9-2.0k MiB/s: the peers vary more than the gain); reads always
 * on io-wq cost `img convert` qcow2->raw 132 -> 158 ms, "auto" 123 -> 133 ms (bench: 1.03x).
 */
const ASYNC_BYTES = 64 * 1024;
/**
 * The ring is set up with IORING_SETUP_COOP_TASKRUN and TASKRUN_FLAG where the kernel has them
 * (5.19): the kernel no longer interrupts the JS thread in user space to finish each completion
 * (io-wq hands every buffered write's clean-up back to the submitter that way; perf showed 8%
 * of the JS thread's samples returning from those interrupts and io-wq's task_work_add at
 * 3.5%); the engine enters the kernel itself when the SQ flags say work is pending (a spin, a
 * reap). 4 KiB page-cache random writes at depth 32 from an empty cache, 3 alternating runs
 * each: 122-145k -> 180-197k IOPS at 10.1-10.8 -> 6.8-7.3 µs CPU per request (the bench case:
 * 0.48x -> 0.70x fio, 1.40x qemu-img bench); O_DIRECT reads at depth 1 and 32, O_DIRECT writes
 * and page-cache reads within noise (depth 1 medians of 5: 23.1k -> 25.3k IOPS).
 */
export const COOP_TASKRUN = true;
/**
 * Small page-cache writes run on the JS thread with pwritev when that cannot block for long
 * (`uring_inline.ts`, `dirty_headroom.ts`). ext4 refuses non-blocking buffered writes
 * (RWF_NOWAIT gives EOPNOTSUPP), so io_uring hands every one to a single io-wq worker per
 * file: a thread hand-off each way around a copy of a few microseconds.
 *
 * Measured (session 6): NBD 4 KiB random writes at depth 32 over TCP, 200k requests,
 * alternating runs: 4.30-4.37 s through io-wq, 3.1-3.3 s inline (nbdkit's file plugin
 * 2.75-2.94 s); `deno task bench`, 5 rounds: NBD TCP randwrite 0.61x -> 0.86x nbdkit, NBD unix
 * randwrite 0.96x -> 1.27x qemu-nbd, page-cache randwrite 0.64x -> 0.70x fio at 1.32x -> 0.99x
 * its CPU, loop lag p99 5.9 ms, max 7.6 ms. A loop of 2M 4 KiB pwrites over a cached 1 GiB
 * file took 2 µs a write and at most 0.38 ms; 1M into new pages of a sparse 4 GiB file, at
 * most 0.37 ms. Session 18 checked it again where inline writes cost the most, writing into
 * pages that are not yet in the cache. The bench case drops the file from the cache before each
 * run. Over 5 rounds: 0.84x nbdkit inline, 0.57x through io-wq (`syncWrites:false`).
 *
 * What can stall a page-cache write: dirty throttling (pauses of up to 200 ms; commit 3aa06d1
 * saw a 126 ms loop lag when these writes ran with no dirty check), a lock another request on
 * the file holds (a write, fallocate or flush in the ring), and reclaim. The engine avoids the
 * first two, stops for {@link SYNC_COOL_MS} after any write slower than {@link SYNC_SLOW_MS},
 * and lets the loop turn every {@link SYNC_BUDGET_MS} (a write due after that waits for the
 * turn rather than going to io-wq: page-cache randwrite 5.0 against 6.3-6.8 µs CPU per request).
 */
export const SYNC_WRITES = true;
/** The largest page-cache write done on the JS thread (bytes): larger ones go to io-wq. */
export const SYNC_BYTES = 16 * 1024;
/** Page-cache writes done on the JS thread may keep the event loop for this long (ms). */
export const SYNC_BUDGET_MS = 1;
/** A page-cache write slower than this (ms) means writeback pressure... */
export const SYNC_SLOW_MS = 1;
/** ...and sends page-cache writes through the ring for this long (ms). */
export const SYNC_COOL_MS = 100;

/**
 * Tuning switches, for side-by-side benchmarks of the engine's policies; not an API. A daemon
 * run as a child process takes them as JSON in `BLOCKGRAPH_URING_TUNING`.
 * - `spinDepth`/`spinMs`: spin on the CQ while at most this many are in flight, for at most
 *   this long;
 * - `timedWaitUs`: the longest wait in the kernel on the JS thread (0: none); `timedCoolMs`:
 *   how long an expired one sends waits to the pool thread; `timedMinFrac`: the share of
 *   requests in flight a timed wait waits for; `timedTurnMs`: timed waits only this long after
 *   the event loop last turned (NBD 4k randwrite at depth 32 against qemu-nbd and nbdkit, 5
 *   rounds: 2 ms, 0.3 ms and 0.1 ms all gave 0.85–0.88x, while O_DIRECT randwrite fell from
 *   0.92x to 0.79x);
 * - `syncWrites`: small page-cache writes with pwritev on the JS thread ({@link SYNC_WRITES});
 *   `syncBytes`: the largest such write; `syncBudgetMs`: how long after a loop turn they may;
 * - `submitBatch`: SQEs queued before an early submit (0: once per microtask round);
 * - `asyncBytes`: the size from which page-cache requests are marked large (0: none);
 *   `asyncOn`: large writes get IOSQE_ASYNC (off); `asyncReads`: large reads do (true,
 *   false, or "auto": while no large write is in flight);
 *   `spinBig`: spin even while large ones are in flight; `earlyBig`: submit large ones early;
 * - `coopTaskrun`: set the ring up with {@link COOP_TASKRUN} (read when the ring is made).
 */
export const uringTuning = {
  spinDepth: SPIN_DEPTH,
  spinMs: SPIN_MS,
  timedWaitUs: TIMED_WAIT_US,
  timedCoolMs: TIMED_COOL_MS,
  timedMinFrac: TIMED_MIN_FRACTION,
  timedTurnMs: YIELD_MS,
  syncWrites: SYNC_WRITES,
  syncBytes: SYNC_BYTES,
  syncBudgetMs: SYNC_BUDGET_MS,
  submitBatch: SUBMIT_BATCH,
  asyncBytes: ASYNC_BYTES,
  spinBig: false,
  earlyBig: false,
  asyncOn: false,
  asyncReads: "auto" as boolean | "auto",
  coopTaskrun: COOP_TASKRUN,
};

// Benchmarks of a daemon in a child process set the switches through the environment.
try {
  const env = Deno.env.get("BLOCKGRAPH_URING_TUNING");
  if (env) Object.assign(uringTuning, JSON.parse(env));
} catch { /* no env permission, or not JSON: the defaults stay */ }
