/**
 * The state of one qemu-io run: the graph, the open image (if any), asynchronous requests
 * still in flight, and the streams output goes to.
 *
 * @module
 */

import { type Backend, BlockError, Graph, type Node } from "@blockgraph/core";
import { defaultRegistry } from "@blockgraph/drivers";
import type { CliIo } from "../common/cli_io.ts";
import { type OpenedImage, openImage, type OpenRequest } from "../common/open_image.ts";

/** How the session raises a signal (`abort`, `sigraise`); replaceable for tests. */
export type SignalRaiser = (signal: number) => void;

const SIGNAL_NAMES: Record<number, Deno.Signal> = {
  1: "SIGHUP",
  2: "SIGINT",
  3: "SIGQUIT",
  6: "SIGABRT",
  9: "SIGKILL",
  10: "SIGUSR1",
  12: "SIGUSR2",
  14: "SIGALRM",
  15: "SIGTERM",
};

/** Raises `signal` on this process, as C's `raise(3)`. */
export function raiseSignal(signal: number): void {
  const name = SIGNAL_NAMES[signal];
  if (name) Deno.kill(Deno.pid, name);
}

/** Extra ways an open can be asked for that the graph cannot honour yet. */
export interface OpenExtras {
  /** `-s`: write to a temporary overlay. */
  readonly snapshot: boolean;
  /** `-C`: copy what is read from the backing chain into the top image. */
  readonly copyOnRead: boolean;
}

/** One qemu-io run. */
export class IoSession {
  /** The graph every image is opened in. */
  readonly graph: Graph;
  /** Where output goes. */
  readonly io: CliIo;
  /** How `abort` and `sigraise` raise their signal. */
  readonly raise: SignalRaiser;
  /** The open image, or `null`. */
  image: OpenedImage | null = null;
  /** The temporary overlay file of `-s`, deleted when the image closes. */
  #overlayFile: string | null = null;
  /** Asynchronous requests (`aio_read`, `aio_write`) not yet completed. */
  readonly pending: Set<Promise<void>> = new Set();
  /** Set by `quit`: no further command runs. */
  quit = false;

  /** A session with a graph over the default drivers. */
  constructor(io: CliIo, raise: SignalRaiser = raiseSignal, graph?: Graph) {
    this.io = io;
    this.raise = raise;
    this.graph = graph ?? new Graph({ registry: defaultRegistry() });
  }

  /** Prints to standard output. */
  out(text: string): void {
    this.io.out(text);
  }

  /** Prints to standard error. */
  err(text: string): void {
    this.io.err(text);
  }

  /** QEMU's `error_report`: the message on standard error, prefixed `qemu-io: `. */
  report(message: string): void {
    this.io.err(`qemu-io: ${message}\n`);
  }

  /** The open image's Backend, or `null`. */
  get backend(): Backend | null {
    return this.image?.backend ?? null;
  }

  /** The open image's top node, or `null`. */
  get node(): Node | null {
    return this.image?.backend.node ?? null;
  }

  /**
   * qemu-io's `openfile`: refuses a second image, opens, reports failures QEMU's way
   * ("can't open device NAME: why"). Returns 0 on success, 1 on failure.
   */
  async openFile(name: string | null, req: OpenRequest, extras: OpenExtras): Promise<number> {
    if (this.image) {
      this.report("file open already, try 'help close'");
      return 1;
    }
    const prefix = name !== null ? `can't open device ${name}: ` : "can't open: ";
    try {
      this.image = extras.snapshot
        ? await this.#openUnderTemporaryOverlay(req)
        : await openImage(this.graph, req, (text) => this.err(text));
    } catch (e) {
      const err = BlockError.from(e);
      this.report(prefix + err.message);
      if (err.hint) this.err(err.hint);
      return 1;
    }
    if (extras.copyOnRead && hasCowChild(this.image.node)) {
      await this.closeFile();
      this.report(
        prefix + "copy-on-read (-C) over a backing chain is not supported yet",
      );
      return 1;
    }
    return 0;
  }

  /**
   * `-s` (QEMU's BDRV_O_SNAPSHOT, `bdrv_append_temp_snapshot`): the image opens read-only,
   * under a temporary qcow2 overlay in `$TMPDIR` (else /var/tmp) of the same size that takes
   * every write; the overlay file is deleted when the image closes, so the image itself never
   * changes.
   */
  async #openUnderTemporaryOverlay(req: OpenRequest): Promise<OpenedImage> {
    const warn = (text: string) => this.err(text);
    const base = await openImage(this.graph, { ...req, readOnly: true }, warn);
    let tmp: string | null = null;
    try {
      tmp = await Deno.makeTempFile({ dir: Deno.env.get("TMPDIR") || "/var/tmp", prefix: "vl." });
      const registry = this.graph.registry;
      await registry.get("qcow2").create!({ filename: tmp, size: base.node.getLength() }, registry);
      const overlay = await openImage(this.graph, {
        filename: null,
        options: {
          driver: "qcow2",
          file: { driver: "file", filename: tmp },
          backing: base.node.name,
        },
        readOnly: req.readOnly,
        cache: req.cache,
        discard: req.discard,
      }, warn);
      this.#overlayFile = tmp;
      return overlay;
    } catch (e) {
      if (tmp !== null) await Deno.remove(tmp).catch(() => {});
      throw e;
    } finally {
      // The overlay's backing child keeps the image's node; its own Backend goes.
      await base.backend.unref();
    }
  }

  /** Waits for every asynchronous request to complete (`aio_flush`). */
  async drainAio(): Promise<void> {
    while (this.pending.size > 0) await Promise.all([...this.pending]);
  }

  /** Completes outstanding requests and closes the image. */
  async closeFile(): Promise<void> {
    await this.drainAio();
    const image = this.image;
    if (!image) return;
    this.image = null;
    await image.backend.unref();
    const overlay = this.#overlayFile;
    if (overlay !== null) {
      this.#overlayFile = null;
      await Deno.remove(overlay).catch(() => {});
    }
  }

  /** Closes the image and the graph. */
  async shutdown(): Promise<void> {
    await this.closeFile();
    await this.graph.closeAll();
  }
}

function hasCowChild(node: Node): boolean {
  if (node.cowChild) return true;
  return node.children.some((c) => c.node !== null && hasCowChild(c.node));
}
