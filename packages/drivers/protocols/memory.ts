/**
 * The `memory` protocol driver: a sparse disk in RAM. Data lives in fixed 64 KiB chunks kept in
 * a map, so ranges never written (or zeroed, discarded or cut off by a shrink) cost nothing and
 * read as zeros. Writes past the end grow the disk, as writes to a file do. Reads and writes
 * complete at once, except that a chain of them lets the event loop turn every few
 * milliseconds (see `io/loop_turn.ts`).
 *
 * @module
 */

import {
  type BlockDriver,
  BlockError,
  type BlockLimits,
  type BlockStatus,
  BlockStatusFlags,
  type DriverInstance,
  type IoVector,
  type Node,
  type OpenContext,
  type OptionValues,
  type PreallocMode,
  ReqFlags,
} from "@blockgraph/core";
import { nextTurn, yieldDue } from "../io/loop_turn.ts";

/** The chunk size in bytes: the granularity of allocation, write-zeroes and discard. */
export const MEMORY_CHUNK_SIZE = 64 * 1024;
const RESOLVED: Promise<void> = Promise.resolve();

/** An open `memory` node. */
export class MemoryInstance implements DriverInstance {
  /** Discard works on whole chunks; the request layer leaves partial heads and tails alone. */
  readonly limits: Partial<BlockLimits> = { pdiscardAlignment: MEMORY_CHUNK_SIZE };
  /** FUA is a no-op: RAM is as stable as this disk gets. */
  readonly supportedWriteFlags: number = ReqFlags.FUA;
  /** Write-zeroes handles FUA and drops whole chunks with or without MAY_UNMAP. */
  readonly supportedZeroFlags: number = ReqFlags.FUA | ReqFlags.MAY_UNMAP;
  readonly #chunks = new Map<number, Uint8Array>();
  readonly #node: Node;
  #length: number;

  /** Creates an empty disk of `length` bytes for `node`. */
  constructor(node: Node, length: number) {
    this.#node = node;
    this.#length = length;
  }

  /** The current size. */
  getLength(): number {
    return this.#length;
  }

  /** How many chunks hold data. */
  get allocatedChunks(): number {
    return this.#chunks.size;
  }

  /** Copies out of the chunks; absent chunks read as zeros. */
  preadv(offset: number, bytes: number, qiov: IoVector, qiovOffset: number): Promise<void> {
    const chunks = this.#chunks;
    while (bytes > 0) {
      const inChunk = offset & (MEMORY_CHUNK_SIZE - 1);
      const n = Math.min(bytes, MEMORY_CHUNK_SIZE - inChunk);
      const chunk = chunks.get(Math.floor(offset / MEMORY_CHUNK_SIZE));
      if (chunk === undefined) qiov.fill(qiovOffset, n, 0);
      else qiov.copyFrom(qiovOffset, chunk, inChunk, n);
      offset += n;
      qiovOffset += n;
      bytes -= n;
    }
    return yieldDue() ? nextTurn() : RESOLVED;
  }

  /** Copies into the chunks, allocating the ones touched for the first time. */
  pwritev(offset: number, bytes: number, qiov: IoVector, qiovOffset: number): Promise<void> {
    const end = offset + bytes;
    const chunks = this.#chunks;
    while (offset < end) {
      const inChunk = offset & (MEMORY_CHUNK_SIZE - 1);
      const n = Math.min(end - offset, MEMORY_CHUNK_SIZE - inChunk);
      const index = Math.floor(offset / MEMORY_CHUNK_SIZE);
      let chunk = chunks.get(index);
      if (chunk === undefined) {
        chunk = new Uint8Array(MEMORY_CHUNK_SIZE);
        chunks.set(index, chunk);
      }
      qiov.copyTo(qiovOffset, chunk, inChunk, n);
      offset += n;
      qiovOffset += n;
    }
    if (end > this.#length) this.#length = end;
    return yieldDue() ? nextTurn() : RESOLVED;
  }

  /** Drops the chunks the range covers whole and zero-fills the partly covered ones. */
  pwriteZeroes(offset: number, bytes: number): Promise<void> {
    const end = offset + bytes;
    this.#zeroRange(offset, end, true);
    if (end > this.#length) this.#length = end;
    return RESOLVED;
  }

  /** Drops the chunks the range covers whole; partly covered chunks keep their data. */
  pdiscard(offset: number, bytes: number): Promise<void> {
    this.#zeroRange(offset, Math.min(offset + bytes, this.#length), false);
    return RESOLVED;
  }

  #zeroRange(offset: number, end: number, zeroPartial: boolean): void {
    const chunks = this.#chunks;
    while (offset < end) {
      const inChunk = offset & (MEMORY_CHUNK_SIZE - 1);
      const n = Math.min(end - offset, MEMORY_CHUNK_SIZE - inChunk);
      const index = Math.floor(offset / MEMORY_CHUNK_SIZE);
      if (n === MEMORY_CHUNK_SIZE) {
        chunks.delete(index);
      } else if (zeroPartial) {
        chunks.get(index)?.fill(0, inChunk, inChunk + n);
      }
      offset += n;
    }
  }

  /**
   * Allocated chunks are DATA, absent ones ZERO, both mapped onto this node; `pnum` runs to the
   * end of the chunks sharing the first one's state.
   */
  blockStatus(_wantZero: boolean, offset: number, bytes: number): BlockStatus {
    const chunks = this.#chunks;
    const first = Math.floor(offset / MEMORY_CHUNK_SIZE);
    const lastByte = offset + bytes - 1;
    const last = Math.floor(lastByte / MEMORY_CHUNK_SIZE);
    const allocated = chunks.has(first);
    let runEnd: number;
    if (allocated) {
      let i = first + 1;
      while (i <= last && chunks.has(i)) i++;
      runEnd = i;
    } else if (last - first <= chunks.size) {
      let i = first + 1;
      while (i <= last && !chunks.has(i)) i++;
      runEnd = i;
    } else {
      // A long hole in a sparse disk: find the next allocated chunk among the few there are.
      runEnd = last + 1;
      for (const index of chunks.keys()) {
        if (index > first && index < runEnd) runEnd = index;
      }
    }
    return {
      status: BlockStatusFlags.OFFSET_VALID |
        (allocated ? BlockStatusFlags.DATA : BlockStatusFlags.ZERO),
      pnum: Math.min(runEnd * MEMORY_CHUNK_SIZE, offset + bytes) - offset,
      map: offset,
      file: this.#node,
    };
  }

  /**
   * Grows or shrinks the disk. Shrinking drops the data beyond the new end, so growing again
   * reads zeros there. `full` and `falloc` allocate the grown range's chunks up front.
   */
  truncate(size: number, _exact: boolean, prealloc: PreallocMode): Promise<void> {
    const old = this.#length;
    if (prealloc !== "off") {
      if (prealloc === "metadata") {
        return Promise.reject(
          new BlockError("ENOTSUP", `Unsupported preallocation mode: ${prealloc}`),
        );
      }
      if (size < old) {
        return Promise.reject(
          new BlockError("ENOTSUP", "Cannot use preallocation for shrinking files"),
        );
      }
    }
    if (size < old) {
      const chunks = this.#chunks;
      const keep = Math.ceil(size / MEMORY_CHUNK_SIZE);
      for (const index of [...chunks.keys()]) if (index >= keep) chunks.delete(index);
      const tail = size & (MEMORY_CHUNK_SIZE - 1);
      if (tail !== 0) chunks.get(keep - 1)?.fill(0, tail);
    } else if (prealloc !== "off") {
      const chunks = this.#chunks;
      const lastIndex = Math.floor((size - 1) / MEMORY_CHUNK_SIZE);
      for (let i = Math.floor(old / MEMORY_CHUNK_SIZE); i <= lastIndex; i++) {
        if (!chunks.has(i)) chunks.set(i, new Uint8Array(MEMORY_CHUNK_SIZE));
      }
    }
    this.#length = size;
    return RESOLVED;
  }

  /** The bytes the allocated chunks take. */
  allocatedSize(): Promise<number> {
    return Promise.resolve(this.#chunks.size * MEMORY_CHUNK_SIZE);
  }

  /** Nothing to make stable. */
  flush(): Promise<void> {
    return RESOLVED;
  }

  /** Frees the chunks. */
  close(): Promise<void> {
    this.#chunks.clear();
    return RESOLVED;
  }
}

/**
 * The `memory` driver. Option: `size` (default 0; writes past the end grow the disk).
 *
 * @example
 * ```ts
 * import { DriverRegistry, Graph } from "@blockgraph/core";
 * import { memoryDriver } from "@blockgraph/drivers";
 * const graph = new Graph({ registry: new DriverRegistry([memoryDriver]) });
 * const node = await graph.open({ driver: "memory", size: 65536 }, "doc");
 * await node.write(4097, new Uint8Array([1, 2, 3]));
 * const buf = new Uint8Array(3);
 * await node.read(4097, buf);
 * console.assert(buf[2] === 3);
 * await node.unref("doc");
 * await graph.closeAll();
 * ```
 */
export const memoryDriver: BlockDriver = {
  name: "memory",
  kind: "protocol",
  protocolPrefix: "memory",
  options: {
    size: { type: "size", description: "initial size of the disk", default: 0 },
  },
  open(ctx: OpenContext, options: OptionValues): Promise<DriverInstance> {
    ctx.node.filename = "memory://";
    return Promise.resolve(new MemoryInstance(ctx.node, options.size as number));
  },
};
