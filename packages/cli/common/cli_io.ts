/**
 * Where a command's output goes and its input comes from. The real process writes to the
 * terminal; tests pass {@link captureIo} and read back what was printed.
 *
 * @module
 */

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

/** The process's own streams. */
export function denoIo(): CliIo {
  let read: (() => Promise<string | null>) | null = null;
  return {
    out: (text) => writeAll(Deno.stdout, text),
    err: (text) => writeAll(Deno.stderr, text),
    readLine: () => (read ??= lineReader(Deno.stdin.readable))(),
    stdinIsTerminal: Deno.stdin.isTerminal(),
    stdoutIsTerminal: Deno.stdout.isTerminal(),
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
