/**
 * A plain socket QMP client for tests: reads the greeting, sends raw text or commands, and
 * sorts what comes back into replies and events. It knows nothing of the monitor's code:
 * it speaks the wire protocol only, so tests drive our monitor as any QMP client would.
 *
 * @module
 */

/** A message from the monitor. */
export type QmpMessage = Record<string, unknown>;

/** A QMP client over a unix socket. */
export class TestQmpClient {
  readonly #conn: Deno.UnixConn;
  #buffer = "";
  readonly #decoder = new TextDecoder();
  readonly #replies: QmpMessage[] = [];
  /** Events received so far, in order. */
  readonly events: QmpMessage[] = [];
  /** The greeting. */
  greeting: QmpMessage = {};
  #waiter: (() => void) | null = null;
  #ended = false;
  readonly #reading: Promise<void>;

  private constructor(conn: Deno.UnixConn) {
    this.#conn = conn;
    this.#reading = this.#read();
  }

  /** Connects to `path`, reads the greeting and, unless `negotiate` is false, negotiates. */
  static async connect(path: string, negotiate = true): Promise<TestQmpClient> {
    const c = new TestQmpClient(await Deno.connect({ path, transport: "unix" }));
    c.greeting = await c.#next(5000);
    if (negotiate) {
      const r = await c.execute("qmp_capabilities");
      if (!("return" in r)) throw new Error(`negotiation failed: ${JSON.stringify(r)}`);
    }
    return c;
  }

  /**
   * Whether the monitor's socket file exists, without connecting (qemu-storage-daemon's
   * monitor serves one client at a time: a probe that connects races with the real client).
   */
  static async socketExists(path: string): Promise<boolean> {
    try {
      await Deno.lstat(path);
      return true;
    } catch {
      return false;
    }
  }

  /**
   * {@link TestQmpClient.connect}, retrying for about a second: the socket file exists
   * between the server's bind and its listen, when a connection is refused.
   */
  static async connectRetrying(path: string): Promise<TestQmpClient> {
    for (let attempt = 1;; attempt++) {
      try {
        return await TestQmpClient.connect(path);
      } catch (e) {
        if (attempt >= 50) throw e;
        await new Promise((r) => setTimeout(r, 20));
      }
    }
  }

  async #read(): Promise<void> {
    const buf = new Uint8Array(65536);
    try {
      for (;;) {
        const n = await this.#conn.read(buf);
        if (n === null) break;
        this.#buffer += this.#decoder.decode(buf.subarray(0, n), { stream: true });
        let nl;
        while ((nl = this.#buffer.indexOf("\n")) >= 0) {
          const line = this.#buffer.slice(0, nl).trim();
          this.#buffer = this.#buffer.slice(nl + 1);
          if (!line) continue;
          const msg = JSON.parse(line) as QmpMessage;
          if ("event" in msg) this.events.push(msg);
          else this.#replies.push(msg);
          this.#wake();
        }
      }
    } catch {
      // Closed under us.
    }
    this.#ended = true;
    this.#wake();
  }

  #wake(): void {
    const w = this.#waiter;
    this.#waiter = null;
    w?.();
  }

  async #next(timeoutMs: number): Promise<QmpMessage> {
    const deadline = Date.now() + timeoutMs;
    while (this.#replies.length === 0) {
      if (this.#ended) throw new Error("QMP connection closed");
      const left = deadline - Date.now();
      if (left <= 0) throw new Error("timed out waiting for a QMP reply");
      let timer: ReturnType<typeof setTimeout> | undefined;
      await new Promise<void>((r) => {
        this.#waiter = r;
        timer = setTimeout(r, left);
      });
      clearTimeout(timer);
    }
    return this.#replies.shift()!;
  }

  /** Sends raw text (a newline is not added). */
  async sendRaw(text: string): Promise<void> {
    const bytes = new TextEncoder().encode(text);
    let off = 0;
    while (off < bytes.length) off += await this.#conn.write(bytes.subarray(off));
  }

  /** Reads the next reply (`return` or `error`). */
  reply(timeoutMs = 10000): Promise<QmpMessage> {
    return this.#next(timeoutMs);
  }

  /** Executes `command` and returns its reply. */
  async execute(
    command: string,
    args?: Record<string, unknown>,
    id?: unknown,
  ): Promise<QmpMessage> {
    const msg: Record<string, unknown> = { execute: command };
    if (args) msg.arguments = args;
    if (id !== undefined) msg.id = id;
    await this.sendRaw(JSON.stringify(msg) + "\n");
    return await this.#next(30000);
  }

  /** Executes `command` and returns its `return`; throws with the error's text otherwise. */
  async ok(command: string, args?: Record<string, unknown>): Promise<unknown> {
    const r = await this.execute(command, args);
    if (!("return" in r)) throw new Error(`${command} failed: ${JSON.stringify(r)}`);
    return r.return;
  }

  /** Executes `command`, expects an error, and returns its class and description. */
  async fails(
    command: string,
    args?: Record<string, unknown>,
  ): Promise<{ class: string; desc: string }> {
    const r = await this.execute(command, args);
    if (!("error" in r)) throw new Error(`${command} unexpectedly succeeded: ${JSON.stringify(r)}`);
    return r.error as { class: string; desc: string };
  }

  /** Waits until an event named `name` has arrived (beyond the first `after`). */
  async waitEvent(name: string, after = 0, timeoutMs = 10000): Promise<QmpMessage> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const e = this.events.slice(after).find((m) => m.event === name);
      if (e) return e;
      if (Date.now() > deadline) throw new Error(`timed out waiting for event ${name}`);
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  /** Whether the monitor closed the connection. */
  get ended(): boolean {
    return this.#ended;
  }

  /** Closes the connection. */
  async close(): Promise<void> {
    try {
      this.#conn.close();
    } catch {
      // Already closed by the monitor.
    }
    await this.#reading;
  }
}
