/**
 * Whether a small page-cache write can be done on the JavaScript thread without sleeping in
 * the kernel's dirty-page throttling: the host's dirty and writeback memory is far below the
 * level at which `balance_dirty_pages` starts to pause writers.
 *
 * Why it matters: ext4 refuses non-blocking buffered writes (`RWF_NOWAIT` gives EOPNOTSUPP),
 * so io_uring hands every page-cache write to an io-wq worker thread, and each one then costs
 * a thread hand-off each way. A 4 KiB `pwritev` into the page cache takes 2–6 µs; the hand-off
 * costs more than the write. Done on the JavaScript thread, the write could only block the
 * event loop for long where the kernel makes the writer sleep: dirty throttling (pauses of up
 * to 200 ms once dirty memory passes the "freerun" level), and waiting for locks or memory.
 * This module answers the first: it reads `/proc/meminfo` and the `vm.dirty_*` settings (at
 * most every {@link REFRESH_MS}) and computes the kernel's freerun level as
 * `mm/page-writeback.c` does (`domain_dirty_limits`: the dirtyable memory is free memory plus
 * the file LRU lists; the limit and the background level are `dirty_bytes` or `dirty_ratio`
 * of it, and their mean is freerun), and says yes while Dirty + Writeback is below
 * {@link HEADROOM_SHARE} of it. Under cgroup v2 with a memory limit the cgroup's own dirty
 * domain is checked the same way (`memory.max`, `memory.current`, `memory.stat`).
 *
 * Anything unreadable (no `/proc`, no read permission) answers no: writes then go through the
 * ring, which never blocks the loop.
 *
 * @module
 */

/** How often the figures are read again (ms). At 1 GiB/s of writes, 50 MiB between reads. */
export const REFRESH_MS = 50;
/** The share of the kernel's freerun level below which dirty memory leaves headroom. */
export const HEADROOM_SHARE = 0.75;

/** Refreshes between reads of the `vm.dirty_*` settings (about once a second). */
const SYSCTL_EVERY = 20;

/** The figures the kernel's freerun level comes from, in bytes. */
export interface DirtyFigures {
  /** Free memory plus the active and inactive file lists (the kernel's dirtyable memory). */
  readonly dirtyable: number;
  /** Dirty plus under writeback. */
  readonly dirty: number;
  /** `vm.dirty_ratio` and `vm.dirty_bytes` (0 when the ratio applies). */
  readonly ratio: number;
  readonly bytes: number;
  /** `vm.dirty_background_ratio` and `vm.dirty_background_bytes`. */
  readonly bgRatio: number;
  readonly bgBytes: number;
}

/**
 * The level below which the kernel lets writers dirty pages without pausing them (bytes):
 * the mean of the dirty limit and the background level, each from its `_bytes` setting when
 * that is set, else from its ratio of the dirtyable memory; a background level at or above
 * the limit counts as half the limit.
 */
export function freerunBytes(f: DirtyFigures): number {
  const thresh = f.bytes > 0 ? f.bytes : f.dirtyable * f.ratio / 100;
  let bg = f.bgBytes > 0 ? f.bgBytes : f.dirtyable * f.bgRatio / 100;
  if (bg >= thresh) bg = thresh / 2;
  return (thresh + bg) / 2;
}

/** True while `f.dirty` is below {@link HEADROOM_SHARE} of the freerun level. */
export function hasHeadroom(f: DirtyFigures): boolean {
  return f.dirty < freerunBytes(f) * HEADROOM_SHARE;
}

/** The `key: value kB` lines of `/proc/meminfo` (or `key value` lines of `memory.stat`). */
function fields(text: string): Map<string, number> {
  const m = new Map<string, number>();
  for (const line of text.split("\n")) {
    const parts = line.split(/[:\s]+/);
    if (parts.length < 2) continue;
    const n = Number(parts[1]);
    if (Number.isFinite(n)) m.set(parts[0]!, parts[2] === "kB" ? n * 1024 : n);
  }
  return m;
}

/** Whether reads under `path` are granted already (a query, never a prompt). */
function granted(path: string): boolean {
  try {
    return Deno.permissions.querySync({ name: "read", path }).state === "granted";
  } catch {
    return false;
  }
}

function readNumber(path: string): number {
  const n = Number(Deno.readTextFileSync(path).trim());
  if (!Number.isFinite(n)) throw new Error(`${path}: not a number`);
  return n;
}

interface Sysctls {
  ratio: number;
  bytes: number;
  bgRatio: number;
  bgBytes: number;
}

function readSysctls(): Sysctls {
  return {
    ratio: readNumber("/proc/sys/vm/dirty_ratio"),
    bytes: readNumber("/proc/sys/vm/dirty_bytes"),
    bgRatio: readNumber("/proc/sys/vm/dirty_background_ratio"),
    bgBytes: readNumber("/proc/sys/vm/dirty_background_bytes"),
  };
}

/** The host's figures, from `/proc/meminfo`. */
function hostFigures(s: Sysctls): DirtyFigures {
  const m = fields(Deno.readTextFileSync("/proc/meminfo"));
  const get = (k: string) => {
    const v = m.get(k);
    if (v === undefined) throw new Error(`/proc/meminfo: no ${k}`);
    return v;
  };
  return {
    dirtyable: get("MemFree") + get("Active(file)") + get("Inactive(file)"),
    dirty: get("Dirty") + get("Writeback"),
    ...s,
  };
}

/**
 * The cgroup v2 memory domain of this process, when it has a limit: the folder of its
 * `memory.max`, else null.
 */
function cgroupDir(): string | null {
  let own: string | undefined;
  try {
    own = Deno.readTextFileSync("/proc/self/cgroup").split("\n").find((l) => l.startsWith("0::"));
  } catch {
    return null;
  }
  if (own === undefined) return null;
  const dir = `/sys/fs/cgroup${own.slice(3).trim()}`.replace(/\/$/, "");
  if (!granted("/sys/fs/cgroup")) throw new Error("no read permission for /sys/fs/cgroup");
  try {
    return Deno.readTextFileSync(`${dir}/memory.max`).trim() === "max" ? null : dir;
  } catch {
    return null;
  }
}

/** The cgroup's figures: its headroom under the limit plus its file pages are dirtyable. */
function cgroupFigures(dir: string, s: Sysctls): DirtyFigures {
  const max = readNumber(`${dir}/memory.max`);
  const current = readNumber(`${dir}/memory.current`);
  const st = fields(Deno.readTextFileSync(`${dir}/memory.stat`));
  const file = st.get("file") ?? 0;
  return {
    dirtyable: Math.max(0, max - current) + file,
    dirty: (st.get("file_dirty") ?? 0) + (st.get("file_writeback") ?? 0),
    ...s,
  };
}

/**
 * The process's view of dirty memory, read at most every {@link REFRESH_MS}; `now` is
 * `performance.now()`.
 */
export class DirtyHeadroom {
  #at = -Infinity;
  #ok = false;
  #sysctls: Sysctls | null = null;
  #cgroup: string | null | undefined = undefined;
  #broken = false;
  #reads = 0;

  /** True while dirty memory is far below the kernel's throttling level (see the module). */
  ok(now: number): boolean {
    if (now - this.#at < REFRESH_MS) return this.#ok;
    this.#at = now;
    this.#ok = this.#read();
    return this.#ok;
  }

  #read(): boolean {
    if (this.#broken) return false;
    if (this.#reads === 0 && !granted("/proc")) {
      // Asking would prompt a user who did not grant reads; the ring never blocks anyway.
      this.#broken = true;
      return false;
    }
    try {
      if (this.#reads++ % SYSCTL_EVERY === 0) this.#sysctls = readSysctls();
      if (this.#cgroup === undefined) this.#cgroup = cgroupDir();
      if (!hasHeadroom(hostFigures(this.#sysctls!))) return false;
      return this.#cgroup === null || hasHeadroom(cgroupFigures(this.#cgroup, this.#sysctls!));
    } catch {
      // No /proc, or no permission to read it: say no for good (the ring never blocks).
      this.#broken = true;
      return false;
    }
  }
}
