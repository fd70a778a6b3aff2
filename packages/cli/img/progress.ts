/**
 * qemu-img's progress line (`-p`): "    (12.34/100%)" redrawn with a carriage return when it
 * moves by more than a step, and a newline at the end, on standard output whatever it is (a
 * terminal, a pipe, a file), as QEMU's `qemu_progress_*`. Without `-p`, SIGUSR1 asks for
 * one report: the next step prints "    (12.34/100%)" and a newline on standard error, as
 * `kill -USR1` does to qemu-img.
 *
 * @module
 */

import type { CliIo } from "../common/cli_io.ts";
import { fixed } from "../common/format.ts";

/** QEMU's `qemu_progress_*` state. */
export class Progress {
  #io: CliIo;
  #enabled: boolean;
  #minSkip: number;
  #current = 0;
  #lastPrint = 0;
  #pending = false;
  #onSignal: (() => void) | null = null;

  /**
   * A progress line on `io`'s standard output when `enabled`, redrawn every `minSkip`%;
   * otherwise one report on standard error after each SIGUSR1 (where the platform has it).
   */
  constructor(io: CliIo, enabled: boolean, minSkip: number) {
    this.#io = io;
    this.#enabled = enabled;
    this.#minSkip = minSkip;
    if (!enabled && Deno.build.os !== "windows") {
      const onSignal = () => this.#pending = true;
      try {
        Deno.addSignalListener("SIGUSR1", onSignal);
        this.#onSignal = onSignal;
      } catch {
        // No signals here (a sandbox without --allow-run): no report on demand.
      }
    }
  }

  /** The percentage shown last. */
  get current(): number {
    return this.#current;
  }

  /** Adds `delta` percent of a `max`-percent share (`max` 0: sets `delta` as the value). */
  print(delta: number, max: number): void {
    const current = Math.min(100, max === 0 ? delta : this.#current + delta / 100 * max);
    this.#current = current;
    if (current > this.#lastPrint + this.#minSkip || current === 100 || current === 0) {
      this.#lastPrint = current;
      if (this.#enabled) this.#io.out(`    (${fixed(current, 2)}/100%)\r`);
      else if (this.#pending) {
        this.#pending = false;
        this.#io.err(`    (${fixed(current, 2)}/100%)\n`);
      }
    }
  }

  /** Ends the line (and stops listening for SIGUSR1). */
  end(): void {
    if (this.#enabled) this.#io.out("\n");
    if (this.#onSignal) {
      Deno.removeSignalListener("SIGUSR1", this.#onSignal);
      this.#onSignal = null;
    }
  }
}
