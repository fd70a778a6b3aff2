/**
 * Runs benchmark cases the fair way: ours and every peer in the same run, alternating within
 * each round (the order rotating from round to round), several rounds, then the median IOPS
 * and the median CPU time per request of each, their ratios ours/peer (and the ratio of each
 * round's pair, to show the noise the median smooths), our event-loop lag, and each case's
 * targets checked. Prints nothing itself; {@link formatTable} renders the rows.
 *
 * Event-loop lag: where ours measures it (in-process runs), each round gives the p99 and max
 * lateness of a 10 ms interval timer over the timed loop; a row reports the median of the
 * rounds' p99 and the largest max, and misses when that p99 exceeds {@link LAG_P99_LIMIT_MS}
 * (the engine shares the loop with devices, exports and the monitor, which must keep
 * answering within a couple of their own periods).
 *
 * @module
 */

import { median, type Runner } from "./runners.ts";

/** The most p99 event-loop lag (ms, median of the rounds) an in-process case may show. */
export const LAG_P99_LIMIT_MS = 20;

/** What a case must reach against one peer (medians, same run). */
export interface Target {
  /** The least IOPS ratio ours/peer. */
  readonly iops?: number;
  /** The most CPU-per-request ratio ours/peer. */
  readonly cpu?: number;
}

/** A peer a case is compared with. */
export interface Peer {
  /** Its name in the table (`fio io_uring`, `qemu-img bench`). */
  readonly name: string;
  /** Makes one run. */
  readonly run: Runner;
  /** The target against this peer, when issue 3 sets one. */
  readonly target?: Target;
}

/** One workload: ours and the peers running it. */
export interface BenchCase {
  /** The workload (`O_DIRECT 4k randread QD32`). */
  readonly name: string;
  /** Our run. */
  readonly ours: Runner;
  /** The peers. */
  readonly peers: readonly Peer[];
  /** Preparation before the case's runs (warming the page cache, for example). */
  readonly before?: () => Promise<void>;
  /** Preparation before every run, untimed (writing back dirty pages, for example). */
  readonly beforeEach?: () => Promise<void>;
}

/** One line of the result: a case against one peer. */
export interface Row {
  /** The case. */
  readonly name: string;
  /** The peer. */
  readonly peer: string;
  /** Our median IOPS. */
  readonly oursIops: number;
  /** The peer's median IOPS. */
  readonly peerIops: number;
  /** Our median CPU time per request, in microseconds. */
  readonly oursCpu: number;
  /** The peer's median CPU time per request, in microseconds. */
  readonly peerCpu: number;
  /** The IOPS ratio ours/peer of each round (the two runs of the same round). */
  readonly roundRatios: readonly number[];
  /** Our event-loop lag (median of the rounds' p99, largest max), where ours measured it. */
  readonly oursLag: { readonly p99Ms: number; readonly maxMs: number } | undefined;
  /** The median of the peer's own CPU report, where it differs in scope from `peerCpu`. */
  readonly peerReportedCpu: number | undefined;
  /** The target, if any. */
  readonly target: Target | undefined;
  /** Each way the target was missed, by how much; empty when met or when there is none. */
  readonly misses: readonly string[];
}

interface Samples {
  iops: number[];
  cpu: number[];
  reportedCpu: number[];
  lagP99: number[];
  lagMax: number[];
}

function samples(): Samples {
  return { iops: [], cpu: [], reportedCpu: [], lagP99: [], lagMax: [] };
}

async function sample(run: Runner, into: Samples): Promise<void> {
  const m = await run();
  const per = (micros: number) => m.requests > 0 ? micros / m.requests : 0;
  into.iops.push(m.requests / m.seconds);
  into.cpu.push(per(m.cpuMicros));
  if (m.reportedCpuMicros !== undefined) into.reportedCpu.push(per(m.reportedCpuMicros));
  if (m.lag !== undefined) {
    into.lagP99.push(m.lag.p99Ms);
    into.lagMax.push(m.lag.maxMs);
  }
}

/**
 * The ways a row misses `target` (IOPS and CPU ratios ours/peer) and the event-loop lag
 * limit (`lagP99`, ms, when ours measured it).
 */
export function missesOf(
  oursIops: number,
  peerIops: number,
  oursCpu: number,
  peerCpu: number,
  target: Target | undefined,
  lagP99?: number,
): string[] {
  const out: string[] = [];
  if (lagP99 !== undefined && lagP99 > LAG_P99_LIMIT_MS) {
    out.push(`lag p99 ${lagP99.toFixed(1)} ms > ${LAG_P99_LIMIT_MS} ms`);
  }
  if (target?.iops !== undefined && oursIops / peerIops < target.iops) {
    out.push(`IOPS ${(oursIops / peerIops).toFixed(2)}x < ${target.iops}x`);
  }
  if (target?.cpu !== undefined && oursCpu / peerCpu > target.cpu) {
    out.push(`CPU ${(oursCpu / peerCpu).toFixed(2)}x > ${target.cpu}x`);
  }
  return out;
}

/**
 * Runs `c`: one warm-up run of ours (JIT, page faults), then `rounds` rounds in which ours
 * and each peer run once, in an order that rotates every round. Returns one row per peer.
 */
export async function runCase(
  c: BenchCase,
  rounds: number,
  progress: (text: string) => void = () => {},
): Promise<Row[]> {
  await c.before?.();
  await c.beforeEach?.();
  await c.ours();
  const runners: { run: Runner; samples: Samples }[] = [
    { run: c.ours, samples: samples() },
    ...c.peers.map((p) => ({ run: p.run, samples: samples() })),
  ];
  for (let r = 0; r < rounds; r++) {
    for (let i = 0; i < runners.length; i++) {
      const x = runners[(r + i) % runners.length]!;
      await c.beforeEach?.();
      await sample(x.run, x.samples);
    }
    const ours = runners[0]!.samples.iops[r]!;
    const ratios = runners.slice(1).map((x) => (ours / x.samples.iops[r]!).toFixed(2));
    progress(`${c.name}: round ${r + 1}/${rounds}, ratio ${ratios.join(" / ")}`);
  }
  const ours = runners[0]!.samples;
  const oursIops = median(ours.iops);
  const oursCpu = median(ours.cpu);
  const oursLag = ours.lagP99.length === rounds
    ? { p99Ms: median(ours.lagP99), maxMs: Math.max(...ours.lagMax) }
    : undefined;
  return c.peers.map((p, i) => {
    const s = runners[i + 1]!.samples;
    const peerIops = median(s.iops);
    const peerCpu = median(s.cpu);
    return {
      name: c.name,
      peer: p.name,
      oursIops,
      peerIops,
      oursCpu,
      peerCpu,
      roundRatios: ours.iops.map((x, r) => x / s.iops[r]!),
      oursLag,
      peerReportedCpu: s.reportedCpu.length === rounds ? median(s.reportedCpu) : undefined,
      target: p.target,
      misses: missesOf(oursIops, peerIops, oursCpu, peerCpu, p.target, oursLag?.p99Ms),
    };
  });
}

/** The column headings of {@link formatTable}. */
export const TABLE_HEADINGS = [
  "case",
  "peer",
  "ours IOPS",
  "peer IOPS",
  "ratio",
  "per-round ratios",
  "ours CPU µs/req",
  "peer CPU µs/req",
  "CPU ratio",
  "lag p99/max ms",
  "target",
  "result",
] as const;

function targetText(r: Row): string {
  const t = r.target;
  const parts: string[] = [];
  if (t?.iops !== undefined) parts.push(`IOPS ≥${t.iops}x`);
  if (t?.cpu !== undefined) parts.push(`CPU ≤${t.cpu}x`);
  if (r.oursLag !== undefined) parts.push(`lag ≤${LAG_P99_LIMIT_MS}`);
  return parts.length ? parts.join(", ") : "–";
}

function resultText(r: Row): string {
  if (r.misses.length) return `MISS: ${r.misses.join("; ")}`;
  return r.target === undefined && r.oursLag === undefined ? "–" : "met";
}

/** Renders `rows` as a Markdown table, misses marked `MISS` with the shortfall. */
export function formatTable(rows: readonly Row[]): string {
  // Conversions per second are single digits: keep two decimals below 100.
  const int = (x: number) => x < 100 ? x.toFixed(2) : Math.round(x).toLocaleString("en");
  const cells = rows.map((r) => [
    r.name,
    r.peer,
    int(r.oursIops),
    int(r.peerIops),
    `${(r.oursIops / r.peerIops).toFixed(2)}x`,
    r.roundRatios.map((x) => x.toFixed(2)).join(" "),
    r.oursCpu.toFixed(2),
    r.peerCpu.toFixed(2),
    r.peerCpu > 0 ? `${(r.oursCpu / r.peerCpu).toFixed(2)}x` : "–",
    r.oursLag === undefined ? "–" : `${r.oursLag.p99Ms.toFixed(1)}/${r.oursLag.maxMs.toFixed(1)}`,
    targetText(r),
    resultText(r),
  ]);
  const all = [[...TABLE_HEADINGS], ...cells];
  const widths = TABLE_HEADINGS.map((_, i) => Math.max(...all.map((row) => row[i]!.length)));
  const line = (row: string[]) => `| ${row.map((c, i) => c.padEnd(widths[i]!)).join(" | ")} |`;
  return [
    line(all[0]!),
    `|${widths.map((w) => "-".repeat(w + 2)).join("|")}|`,
    ...cells.map(line),
  ].join("\n") + "\n";
}
