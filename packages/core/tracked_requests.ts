/**
 * Tracked and serialising requests: every write in flight on a node is tracked, so that a
 * serialising request (a read-modify-write of a partial block, a copy-on-write) can wait for
 * the overlapping writes before it, and later writes can wait for it.
 *
 * Slots are pooled: a request in the fast path allocates nothing here.
 *
 * @module
 */

/** One tracked request. Owned by {@link TrackedRequests}; do not keep it after `end`. */
export class TrackedRequest {
  /** First byte covered (aligned to what the request serialises on). */
  start: number = 0;
  /** One past the last byte covered. */
  end: number = 0;
  /** Whether overlapping requests must be ordered against this one. */
  serialising: boolean = false;
  /** Start order: a request only ever waits for requests that started before it. */
  seq: number = 0;
  /** Index in the active list, for O(1) removal. */
  index: number = -1;
  /** Callbacks of requests waiting for this one to end. */
  waiters: (() => void)[] | null = null;
}

/** The set of tracked requests of one node. */
export class TrackedRequests {
  #active: TrackedRequest[] = [];
  #free: TrackedRequest[] = [];
  #serialising = 0;
  #seq = 0;

  /** How many requests are tracked. */
  get size(): number {
    return this.#active.length;
  }

  /** Whether any serialising request is in flight. */
  get hasSerialising(): boolean {
    return this.#serialising > 0;
  }

  /** Starts tracking `[start, end)`. */
  begin(start: number, end: number, serialising: boolean): TrackedRequest {
    const r = this.#free.pop() ?? new TrackedRequest();
    r.start = start;
    r.end = end;
    r.serialising = serialising;
    r.seq = ++this.#seq;
    r.index = this.#active.length;
    this.#active.push(r);
    if (serialising) this.#serialising++;
    return r;
  }

  /** Stops tracking `r` and wakes whoever waited for it. */
  end(r: TrackedRequest): void {
    const active = this.#active;
    const last = active.pop()!;
    if (last !== r) {
      active[r.index] = last;
      last.index = r.index;
    }
    if (r.serialising) this.#serialising--;
    const waiters = r.waiters;
    r.waiters = null;
    r.index = -1;
    this.#free.push(r);
    if (waiters) { for (const w of waiters) w(); }
  }

  /**
   * Resolves once no request that `r` must wait for overlaps it: for a serialising request,
   * every overlapping request that started before it; for any other, every overlapping
   * serialising request. Returns `null` when there was nothing to wait for (the common case).
   */
  waitSerialising(r: TrackedRequest): Promise<void> | null {
    const blocker = this.#findBlocker(r);
    if (!blocker) return null;
    return this.#waitLoop(r, blocker);
  }

  async #waitLoop(r: TrackedRequest, blocker: TrackedRequest): Promise<void> {
    let b: TrackedRequest | null = blocker;
    while (b) {
      await new Promise<void>((resolve) => (b!.waiters ??= []).push(resolve));
      b = this.#findBlocker(r);
    }
  }

  #findBlocker(r: TrackedRequest): TrackedRequest | null {
    if (!r.serialising && this.#serialising === 0) return null;
    const active = this.#active;
    for (let i = 0; i < active.length; i++) {
      const o = active[i]!;
      if (o.seq >= r.seq || o.end <= r.start || o.start >= r.end) continue;
      if (r.serialising || o.serialising) return o;
    }
    return null;
  }
}
