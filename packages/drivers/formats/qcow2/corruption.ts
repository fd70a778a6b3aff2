/**
 * Corruption found in an open image (QEMU's `qcow2_signal_corruption`): on a writable image
 * the corrupt bit is written to the header, a fatal BLOCK_IMAGE_CORRUPTED is emitted and all
 * further I/O fails; on a read-only one it is reported once and reading goes on.
 *
 * @module
 */

import { BlockError, type Node } from "@blockgraph/core";
import { Incompat, viewOf } from "./format.ts";
import type { Qcow2Header } from "./header.ts";

/** Where an image's corruption is reported. */
export interface CorruptionSink {
  /** The graph's event bus emitter. */
  emit(name: string, data: Record<string, unknown>): void;
  /** The node's name, for the event. */
  nodeName: string;
}

/** The corruption state of one open image. */
export class Corruption {
  /** Set once corruption was found in a writable image: all I/O fails from then on. */
  broken = false;
  #warned = false;
  #marking: Promise<void> | null = null;
  readonly #sink: CorruptionSink;
  readonly #header: Qcow2Header;
  readonly #file: Node;

  /** No corruption yet in the image with `header` in `file`, reported to `sink`. */
  constructor(sink: CorruptionSink, header: Qcow2Header, file: Node) {
    this.#sink = sink;
    this.#header = header;
    this.#file = file;
  }

  /**
   * Reports `message` (at `offset`, `size` bytes, when known): on a `writable` image marks
   * it corrupt (incompatible bit 1) and stops its I/O; on a read-only one, reports once.
   * Returns the EIO error for the request to fail with.
   */
  signal(message: string, writable: boolean, offset?: number, size?: number): Error {
    if (writable && !this.broken) {
      console.error(
        `qcow2: Marking image as corrupt: ${message}; further corruption events will be suppressed`,
      );
      this.broken = true;
      this.#header.incompatible |= BigInt(Incompat.CORRUPT);
      this.#marking = this.#writeFeatureBits().catch(() => {});
      this.#emit(message, offset, size, true);
    } else if (!writable && !this.#warned) {
      console.error(
        `qcow2: Image is corrupt: ${message}; further non-fatal corruption events will be suppressed`,
      );
      this.#warned = true;
      this.#emit(message, offset, size, false);
    }
    return new BlockError("EIO", `qcow2: ${message}`, offset === undefined ? {} : { offset });
  }

  /** Waits for a corrupt marking in progress (before close). */
  async settle(): Promise<void> {
    if (this.#marking) await this.#marking;
  }

  /** The error every request gets once the image was found corrupt. */
  brokenError(): BlockError {
    return new BlockError(
      "EIO",
      `Node '${this.#sink.nodeName}' is corrupted: the qcow2 image was marked corrupt and ` +
        "refuses further I/O",
    );
  }

  #emit(msg: string, offset: number | undefined, size: number | undefined, fatal: boolean): void {
    const data: Record<string, unknown> = { device: "", "node-name": this.#sink.nodeName, msg };
    if (offset !== undefined) data.offset = offset;
    if (size !== undefined) data.size = size;
    data.fatal = fatal;
    this.#sink.emit("BLOCK_IMAGE_CORRUPTED", data);
  }

  /** Writes the incompatible feature bits (v3) straight to the header and flushes. */
  async #writeFeatureBits(): Promise<void> {
    if (this.#header.version < 3) return;
    const buf = new Uint8Array(8);
    viewOf(buf).setBigUint64(0, this.#header.incompatible);
    await this.#file.write(72, buf);
    await this.#file.flush();
  }
}
