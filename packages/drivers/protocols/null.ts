/**
 * The `null-co` protocol driver: a disk of a given size that stores nothing. Writes are
 * discarded; reads leave the caller's buffer untouched unless `read-zeroes` is on. It is the
 * yardstick for the request path: with no latency it completes every request with one shared,
 * already-resolved promise, except that a chain of such requests lets the event loop turn every
 * few milliseconds (see `io/loop_turn.ts`).
 *
 * @module
 */

import {
  type BlockDriver,
  BlockError,
  type BlockStatus,
  BlockStatusFlags,
  type DriverInstance,
  type IoVector,
  type Node,
  type OpenContext,
  type OptionValues,
  ReqFlags,
} from "@blockgraph/core";
import { nextTurn, yieldDue } from "../io/loop_turn.ts";

const RESOLVED: Promise<void> = Promise.resolve();
/** The one filename the driver accepts (`null-co://`), as QEMU. */
const NULL_FILENAME = "null-co://";

/** An open `null-co` node. */
export class NullInstance implements DriverInstance {
  /** FUA costs nothing when nothing is stored. */
  readonly supportedWriteFlags: number = ReqFlags.FUA;
  readonly #length: number;
  readonly #readZeroes: boolean;
  readonly #node: Node;
  /** The delay in whole milliseconds; 0 completes at once. */
  readonly #delayMs: number;
  readonly #delayed: () => Promise<void>;

  /** Creates an instance for `node`; `latencyNs` below 1 ms means no delay. */
  constructor(node: Node, length: number, readZeroes: boolean, latencyNs: number) {
    this.#node = node;
    this.#length = length;
    this.#readZeroes = readZeroes;
    this.#delayMs = latencyNs >= 1_000_000 ? Math.round(latencyNs / 1_000_000) : 0;
    const ms = this.#delayMs;
    this.#delayed = () => new Promise<void>((resolve) => setTimeout(resolve, ms));
  }

  /** Completion of a request with no delay: at once, or after a turn of the event loop. */
  #now(): Promise<void> {
    return yieldDue() ? nextTurn() : RESOLVED;
  }

  /** The configured size. */
  getLength(): number {
    return this.#length;
  }

  /** Fills the range with zeros when `read-zeroes` is on; otherwise leaves it alone. */
  preadv(_offset: number, bytes: number, qiov: IoVector, qiovOffset: number): Promise<void> {
    if (this.#readZeroes) qiov.fill(qiovOffset, bytes, 0);
    return this.#delayMs === 0 ? this.#now() : this.#delayed();
  }

  /** Discards the data. */
  pwritev(): Promise<void> {
    return this.#delayMs === 0 ? this.#now() : this.#delayed();
  }

  /** Nothing to make stable; waits the configured latency like any request. */
  flush(): Promise<void> {
    return this.#delayMs === 0 ? this.#now() : this.#delayed();
  }

  /**
   * The whole range in one answer, mapped onto this node: ZERO with `read-zeroes`, else DATA
   * (QEMU reports neither bit without `read-zeroes`; DATA says reads may return anything).
   */
  blockStatus(_wantZero: boolean, offset: number, bytes: number): BlockStatus {
    return {
      // As QEMU's null driver: with read-zeroes the range reads as zeros; without, reads
      // return whatever the buffer held, so the range is neither data nor zeros.
      status: BlockStatusFlags.OFFSET_VALID | (this.#readZeroes ? BlockStatusFlags.ZERO : 0),
      pnum: bytes,
      map: offset,
      file: this.#node,
    };
  }

  /** A null disk occupies no storage. */
  allocatedSize(): Promise<number> {
    return Promise.resolve(0);
  }

  /** Nothing to release. */
  close(): Promise<void> {
    return RESOLVED;
  }
}

/**
 * The `null-co` driver. Options: `size` (default 1 GiB), `read-zeroes` (default off, as in
 * QEMU 7.2) and `latency-ns` (default 0).
 *
 * @example
 * ```ts
 * import { DriverRegistry, Graph } from "@blockgraph/core";
 * import { nullDriver } from "@blockgraph/drivers";
 * const graph = new Graph({ registry: new DriverRegistry([nullDriver]) });
 * const node = await graph.open({ driver: "null-co", size: 4096, "read-zeroes": true }, "doc");
 * const buf = new Uint8Array(512).fill(7);
 * await node.read(0, buf);
 * console.assert(buf.every((b) => b === 0));
 * await node.unref("doc");
 * await graph.closeAll();
 * ```
 */
export const nullDriver: BlockDriver = {
  name: "null-co",
  kind: "protocol",
  protocolPrefix: "null-co",
  options: {
    size: { type: "size", description: "size of the null block", default: 1 << 30 },
    "latency-ns": {
      type: "int",
      description: "nanoseconds (approximated) to wait before completing request",
      default: 0,
    },
    "read-zeroes": { type: "bool", description: "return zeroes when read", default: false },
  },
  strongOptions: ["size", "read-zeroes"],
  /** `null-co://` when only the driver (and a latency) was given; `""` otherwise. */
  exactFilename(_node: Node, options: OptionValues): string {
    const plain = Object.keys(options).every((k) =>
      k === "driver" || k === "filename" || k === "latency-ns"
    );
    return plain ? NULL_FILENAME : "";
  },
  parseFilename(filename: string): OptionValues {
    if (filename !== NULL_FILENAME) {
      throw new BlockError(
        "EINVAL",
        `The only allowed filename for this driver is '${NULL_FILENAME}'`,
      );
    }
    return {};
  },
  open(ctx: OpenContext, options: OptionValues): Promise<DriverInstance> {
    const latency = options["latency-ns"] as number;
    if (latency < 0) {
      return Promise.reject(new BlockError("EINVAL", "latency-ns is invalid"));
    }
    ctx.node.filename = NULL_FILENAME;
    return Promise.resolve(
      new NullInstance(
        ctx.node,
        options.size as number,
        options["read-zeroes"] as boolean,
        latency,
      ),
    );
  },
};
