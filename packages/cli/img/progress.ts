/**
 * qemu-img's progress line (`-p`): "    (12.34/100%)" redrawn with a carriage return when it
 * moves by more than a step, and a newline at the end. Drawn only when standard output is a
 * terminal.
 *
 * @module
 */

import type { CliIo } from "../common/cli_io.ts";

/** QEMU's `qemu_progress_*` state. */
export class Progress {
  #io: CliIo;
  #enabled: boolean;
  #minSkip: number;
  #current = 0;
  #lastPrint = 0;

  /** A progress line on `io` when `enabled` and stdout is a terminal; redrawn every `minSkip`%. */
  constructor(io: CliIo, enabled: boolean, minSkip: number) {
    this.#io = io;
    this.#enabled = enabled && io.stdoutIsTerminal === true;
    this.#minSkip = minSkip;
  }

  /** The percentage shown last. */
  get current(): number {
    return this.#current;
  }

  /** Adds `delta` percent of a `max`-percent share (`max` 0: sets `delta` as the value). */
  print(delta: number, max: number): void {
    const current = max === 0 ? delta : this.#current + delta / 100 * max;
    this.#current = current;
    if (
      current > this.#lastPrint + this.#minSkip || current < this.#lastPrint - this.#minSkip ||
      current === 0 || current === 100
    ) {
      this.#lastPrint = current;
      if (this.#enabled) this.#io.out(`    (${current.toFixed(2)}/100%)\r`);
    }
  }

  /** Ends the line. */
  end(): void {
    if (this.#enabled) this.#io.out("\n");
  }
}
