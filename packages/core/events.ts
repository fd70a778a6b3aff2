/**
 * Events: a small typed emitter. The graph emits QMP-named events (`DEVICE_TRAY_MOVED`,
 * `BLOCK_IO_ERROR`, ...) that the monitor forwards unchanged.
 *
 * @module
 */

/** An event as delivered to listeners. */
export interface BlockEvent<T = Record<string, unknown>> {
  /** The QMP event name. */
  readonly event: string;
  /** The event's data. */
  readonly data: T;
  /** When it happened: seconds and microseconds since the epoch, as QMP stamps events. */
  readonly timestamp: { seconds: number; microseconds: number };
}

/** A listener for one event name, or for every event (`"*"`). */
export type EventListener = (event: BlockEvent) => void;

/** Emits named events to listeners; a throwing listener does not stop the others. */
export class EventBus {
  #listeners = new Map<string, Set<EventListener>>();

  /** Calls `listener` for each `name` event (`"*"`: every event). Returns an unsubscribe. */
  on(name: string, listener: EventListener): () => void {
    let set = this.#listeners.get(name);
    if (!set) this.#listeners.set(name, set = new Set());
    set.add(listener);
    return () => set.delete(listener);
  }

  /** Emits `name` with `data` to its listeners and to `"*"` listeners. */
  emit(name: string, data: Record<string, unknown>): void {
    const specific = this.#listeners.get(name);
    const all = this.#listeners.get("*");
    if (!specific?.size && !all?.size) return;
    const now = Date.now();
    const event: BlockEvent = {
      event: name,
      data,
      timestamp: { seconds: Math.floor(now / 1000), microseconds: (now % 1000) * 1000 },
    };
    for (const set of [specific, all]) {
      if (!set) continue;
      for (const l of [...set]) {
        try {
          l(event);
        } catch (err) {
          console.error(`event listener for ${name} failed:`, err);
        }
      }
    }
  }
}
