/**
 * The two locks of the qcow2 driver: a mutex for metadata (L1, L2 and refcount structures,
 * held only around metadata work, never around guest data I/O) and per-guest-cluster
 * allocation claims, so that two writes to the same unallocated cluster never both allocate
 * it: the second waits for the first and then finds the cluster allocated.
 *
 * @module
 */

/** A FIFO async mutex. */
export class Mutex {
  #tail: Promise<void> = Promise.resolve();
  #held = false;
  #waiting = 0;

  /** Whether the mutex is held. */
  get held(): boolean {
    return this.#held;
  }

  /**
   * Whether the mutex is held or anyone waits for it (between one holder's release and the
   * next one's start, `held` is false while a waiter is already due): a fast path that must
   * not overtake the waiters (allocating clusters in request order) checks this.
   */
  get busy(): boolean {
    return this.#held || this.#waiting > 0;
  }

  /** Runs `fn` holding the mutex; waiters run in arrival order. */
  async run<T>(fn: () => Promise<T>): Promise<T> {
    let release!: () => void;
    const next = new Promise<void>((r) => (release = r));
    const prev = this.#tail;
    this.#tail = next;
    this.#waiting++;
    await prev;
    this.#waiting--;
    this.#held = true;
    try {
      return await fn();
    } finally {
      this.#held = false;
      release();
    }
  }
}

/** Claims on guest clusters that a write is allocating. */
export class ClusterClaims {
  readonly #claims = new Map<number, Promise<void>>();

  /** A promise for the first claimed cluster in `[first, first+count)`, or null. */
  busy(first: number, count: number): Promise<void> | null {
    if (this.#claims.size === 0) return null;
    for (let c = first; c < first + count; c++) {
      const p = this.#claims.get(c);
      if (p) return p;
    }
    return null;
  }

  /** A promise for any claim in flight, or null when there is none. */
  any(): Promise<void> | null {
    for (const p of this.#claims.values()) return p;
    return null;
  }

  /** Claims `[first, first+count)` (none may be claimed); returns the release function. */
  claim(first: number, count: number): () => void {
    let release!: () => void;
    const p = new Promise<void>((r) => (release = r));
    for (let c = first; c < first + count; c++) this.#claims.set(c, p);
    return () => {
      for (let c = first; c < first + count; c++) {
        if (this.#claims.get(c) === p) this.#claims.delete(c);
      }
      release();
    };
  }

  /** How many clusters are claimed. */
  get size(): number {
    return this.#claims.size;
  }
}

/**
 * Guest writes in flight to host clusters they did not allocate (in-place writes to COPIED
 * clusters): a free must wait for them before the cluster's refcount drops, or a later
 * allocation could reuse the cluster while a stale write still lands in it.
 */
export class InflightWrites {
  readonly #counts = new Map<number, number>();
  #ended: { promise: Promise<void>; resolve: () => void } | null = null;

  /** Records a write to host clusters `[first, first+count)`; returns the end function. */
  begin(first: number, count: number): () => void {
    for (let c = first; c < first + count; c++) this.#counts.set(c, (this.#counts.get(c) ?? 0) + 1);
    return () => {
      for (let c = first; c < first + count; c++) {
        const n = this.#counts.get(c)! - 1;
        if (n === 0) this.#counts.delete(c);
        else this.#counts.set(c, n);
      }
      const ended = this.#ended;
      this.#ended = null;
      ended?.resolve();
    };
  }

  /** A promise for the end of some write, when one is in flight to `[first, first+count)`. */
  busy(first: number, count: number): Promise<void> | null {
    if (this.#counts.size === 0) return null;
    for (let c = first; c < first + count; c++) if (this.#counts.has(c)) return this.#next();
    return null;
  }

  /** A promise for the end of some write, when any is in flight; else null. */
  any(): Promise<void> | null {
    return this.#counts.size === 0 ? null : this.#next();
  }

  /** Waits until no write is in flight to `[first, first+count)`. */
  async drain(first: number, count: number): Promise<void> {
    for (let b = this.busy(first, count); b; b = this.busy(first, count)) await b;
  }

  #next(): Promise<void> {
    if (!this.#ended) {
      let resolve!: () => void;
      const promise = new Promise<void>((r) => (resolve = r));
      this.#ended = { promise, resolve };
    }
    return this.#ended.promise;
  }
}

/** What {@link whenIdle} waits on: an image's metadata lock, claims and in-place writes. */
export interface IdleGate {
  /** The metadata lock. */
  readonly lock: Mutex;
  /** Guest clusters being allocated. */
  readonly claims: ClusterClaims;
  /** Host clusters with in-place writes in flight. */
  readonly inflight: InflightWrites;
}

/**
 * Runs `fn` under the metadata lock once no allocation and no in-place write is in flight
 * (resize, snapshots, check, amend: work on the structures as a whole).
 */
export async function whenIdle<T>(gate: IdleGate, fn: () => Promise<T>): Promise<T> {
  for (;;) {
    // Boxed: a promise returned from inside the lock would be awaited there.
    const r = await gate.lock.run(async () => {
      const busy = gate.claims.any() ?? gate.inflight.any();
      return busy ? { busy } : { busy: null, value: await fn() };
    });
    if (!r.busy) return r.value as T;
    await r.busy;
  }
}
