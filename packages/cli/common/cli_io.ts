/**
 * Where a command's output goes and its input comes from. The real process writes to the
 * terminal; tests pass {@link captureIo} and read back what was printed.
 *
 * @module
 */

import { zeroTimeout } from "@blockgraph/drivers";

/** The standard streams of one command run. */
export interface CliIo {
  /** Writes text to standard output. */
  out(text: string): void;
  /** Writes text to standard error. */
  err(text: string): void;
  /** Reads the next line of standard input (without its newline), or `null` at its end. */
  readLine(): Promise<string | null>;
  /** Whether standard input is a terminal. */
  readonly stdinIsTerminal: boolean;
  /** Whether standard output is a terminal (progress bars are drawn only there). */
  readonly stdoutIsTerminal?: boolean;
  /** Writes out what `out` holds back (see {@link denoIo}); call before the process exits. */
  flush?(): void;
}

const encoder = new TextEncoder();

function writeAll(file: { writeSync(p: Uint8Array): number }, text: string): void {
  let bytes = encoder.encode(text);
  while (bytes.length > 0) bytes = bytes.subarray(file.writeSync(bytes));
}

/** Reads `stream` line by line. */
function lineReader(stream: ReadableStream<Uint8Array>): () => Promise<string | null> {
  const reader = stream.pipeThrough(new TextDecoderStream()).getReader();
  let buffered = "";
  let ended = false;
  return async () => {
    for (;;) {
      const nl = buffered.indexOf("\n");
      if (nl >= 0) {
        const line = buffered.slice(0, nl);
        buffered = buffered.slice(nl + 1);
        return line;
      }
      if (ended) {
        if (buffered === "") return null;
        const line = buffered;
        buffered = "";
        return line;
      }
      const { value, done } = await reader.read();
      if (done) ended = true;
      else buffered += value;
    }
  };
}

/** Standard output held back before a write, in UTF-16 units. */
const OUT_BUFFER = 64 * 1024;

/**
 * The process's own streams. Standard output that is not a terminal is buffered as C's stdio
 * buffers it: written when 64 KiB are held, when the event loop next turns, before anything
 * goes to standard error or a line is read, and on `flush`. `img map` of a fragmented image
 * printed 131072 lines with as many write calls. A reader that has gone away (`| head`) makes
 * `out` and `flush` throw `Deno.errors.BrokenPipe`, also when a timed write met it first.
 */
export function denoIo(): CliIo {
  let read: (() => Promise<string | null>) | null = null;
  const buffered = !Deno.stdout.isTerminal();
  let held: string[] = [];
  let heldLength = 0;
  // A zero timeout is armed; it flushes whatever is held when it runs.
  let armed = false;
  let broken = false;
  const flush = () => {
    if (broken) throw new Deno.errors.BrokenPipe("standard output was closed");
    if (heldLength === 0) return;
    const text = held.join("");
    held = [];
    heldLength = 0;
    try {
      writeAll(Deno.stdout, text);
    } catch (e) {
      if (e instanceof Deno.errors.BrokenPipe) broken = true;
      throw e;
    }
  };
  const flushLater = () => {
    armed = false;
    try {
      flush();
    } catch (e) {
      // Met again by the next `out` or `flush`, in the command's own flow.
      if (!broken) throw e;
    }
  };
  return {
    out: (text) => {
      if (!buffered) return writeAll(Deno.stdout, text);
      if (broken) throw new Deno.errors.BrokenPipe("standard output was closed");
      held.push(text);
      heldLength += text.length;
      if (heldLength >= OUT_BUFFER) flush();
      else if (!armed) {
        armed = true;
        zeroTimeout(flushLater);
      }
    },
    err: (text) => {
      if (heldLength > 0) flush();
      writeAll(Deno.stderr, text);
    },
    readLine: () => {
      if (heldLength > 0) flush();
      return (read ??= lineReader(Deno.stdin.readable))();
    },
    stdinIsTerminal: Deno.stdin.isTerminal(),
    stdoutIsTerminal: !buffered,
    flush,
  };
}

/** A {@link CliIo} that records what is printed, for tests. */
export interface CapturedIo extends CliIo {
  /** Everything written to standard output. */
  readonly stdout: string;
  /** Everything written to standard error. */
  readonly stderr: string;
}

/**
 * Captures output in memory; `input` lines are served to `readLine`; `stdoutIsTerminal`
 * makes commands draw what they draw only on a terminal.
 */
export function captureIo(input: readonly string[] = [], stdoutIsTerminal = false): CapturedIo {
  let stdout = "";
  let stderr = "";
  const lines = [...input];
  return {
    out: (text) => void (stdout += text),
    err: (text) => void (stderr += text),
    readLine: () => Promise.resolve(lines.length > 0 ? lines.shift()! : null),
    stdinIsTerminal: false,
    stdoutIsTerminal,
    get stdout() {
      return stdout;
    },
    get stderr() {
      return stderr;
    },
  };
}
