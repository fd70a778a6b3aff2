/**
 * Runs benchmark cases the fair way: ours and every peer in the same run, alternating within
 * each round (the order rotating from round to round), several rounds, then the median IOPS
 * and the median CPU time per request of each, their ratios ours/peer, and each case's target
 * from issue 3 checked. Prints nothing itself; {@link formatTable} renders the rows.
 *
 * @module
 */

import { median, type Runner } from "./runners.ts";

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
  /** The target, if any. */
  readonly target: Target | undefined;
  /** Each way the target was missed, by how much; empty when met or when there is none. */
  readonly misses: readonly string[];
}

interface Samples {
  iops: number[];
  cpu: number[];
}

async function sample(run: Runner, into: Samples): Promise<void> {
  const m = await run();
  into.iops.push(m.requests / m.seconds);
  into.cpu.push(m.requests > 0 ? m.cpuMicros / m.requests : 0);
}

/** The ways `row`'s ratios miss `target`. */
export function missesOf(
  oursIops: number,
  peerIops: number,
  oursCpu: number,
  peerCpu: number,
  target: Target | undefined,
): string[] {
  const out: string[] = [];
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
  await c.ours();
  const runners: { run: Runner; samples: Samples }[] = [
    { run: c.ours, samples: { iops: [], cpu: [] } },
    ...c.peers.map((p) => ({ run: p.run, samples: { iops: [], cpu: [] } })),
  ];
  for (let r = 0; r < rounds; r++) {
    for (let i = 0; i < runners.length; i++) {
      const x = runners[(r + i) % runners.length]!;
      await sample(x.run, x.samples);
    }
    progress(`${c.name}: round ${r + 1}/${rounds}`);
  }
  const ours = runners[0]!.samples;
  const oursIops = median(ours.iops);
  const oursCpu = median(ours.cpu);
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
      target: p.target,
      misses: missesOf(oursIops, peerIops, oursCpu, peerCpu, p.target),
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
  "ours CPU µs/req",
  "peer CPU µs/req",
  "CPU ratio",
  "target",
  "result",
] as const;

function targetText(t: Target | undefined): string {
  const parts: string[] = [];
  if (t?.iops !== undefined) parts.push(`IOPS ≥${t.iops}x`);
  if (t?.cpu !== undefined) parts.push(`CPU ≤${t.cpu}x`);
  return parts.length ? parts.join(", ") : "–";
}

/** Renders `rows` as a Markdown table, misses marked `MISS` with the shortfall. */
export function formatTable(rows: readonly Row[]): string {
  const int = (x: number) => Math.round(x).toLocaleString("en");
  const cells = rows.map((r) => [
    r.name,
    r.peer,
    int(r.oursIops),
    int(r.peerIops),
    `${(r.oursIops / r.peerIops).toFixed(2)}x`,
    r.oursCpu.toFixed(2),
    r.peerCpu.toFixed(2),
    r.peerCpu > 0 ? `${(r.oursCpu / r.peerCpu).toFixed(2)}x` : "–",
    targetText(r.target),
    r.target === undefined ? "–" : r.misses.length ? `MISS: ${r.misses.join("; ")}` : "met",
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
