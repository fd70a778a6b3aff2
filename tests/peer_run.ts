/**
 * Running peer commands in tests: one-shot commands with a timeout, and long-running servers
 * (qemu-nbd, nbdkit) that are killed by the caller in `finally` and by a timer otherwise.
 *
 * @module
 */

/** Every peer command is killed after this long. */
export const PEER_TIMEOUT_MS = 30_000;

/** What a finished command printed and how it exited. */
export interface PeerResult {
  /** The exit code. */
  code: number;
  /** Its standard output. */
  out: string;
  /** Its standard error. */
  err: string;
}

/** Where and how {@link runPeer} runs a command. */
export interface PeerRunOptions {
  /** The working folder (default: this process's). */
  cwd?: string;
  /** Variables added to the environment. */
  env?: Record<string, string>;
}

/** Runs `cmd` to completion (killed after {@link PEER_TIMEOUT_MS}). */
export async function runPeer(
  cmd: string,
  args: string[],
  { cwd, env = {} }: PeerRunOptions = {},
): Promise<PeerResult> {
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(), PEER_TIMEOUT_MS);
  try {
    const r = await new Deno.Command(cmd, {
      args,
      env,
      ...(cwd === undefined ? {} : { cwd }),
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
      signal: ac.signal,
    }).output();
    const d = new TextDecoder();
    return { code: r.code, out: d.decode(r.stdout), err: d.decode(r.stderr) };
  } finally {
    clearTimeout(timer);
  }
}

/** Runs `cmd` like {@link runPeer} and fails with its standard error unless it exits 0; its output. */
export async function mustPeer(
  cmd: string,
  args: string[],
  options: PeerRunOptions = {},
): Promise<string> {
  const r = await runPeer(cmd, args, options);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(" ")} failed (${r.code}): ${r.err}`);
  return r.out;
}

/** `qemu-img create -q -f qcow2 -o OPTIONS PATH SIZE`, failing with qemu-img's message. */
export async function qemuCreateQcow2(path: string, size: string, options: string): Promise<void> {
  await mustPeer("qemu-img", ["create", "-q", "-f", "qcow2", "-o", options, path, size]);
}

/** A server process: {@link PeerServer.stop} kills it and waits for it. */
export interface PeerServer {
  /** The child process. */
  readonly child: Deno.ChildProcess;
  /** Kills the process (if it still runs) and waits for it to exit. */
  stop(): Promise<void>;
}

/**
 * Starts `cmd` in the background (where and how `options` say, as {@link runPeer}), killed
 * after `timeoutMs` if the caller has not stopped it; resolves once `ready()` says the
 * server is up (polled every 20 ms, for at most 10 s).
 */
export async function spawnPeer(
  cmd: string,
  args: string[],
  ready: () => Promise<boolean>,
  timeoutMs = 120_000,
  { cwd, env = {} }: PeerRunOptions = {},
): Promise<PeerServer> {
  const child = new Deno.Command(cmd, {
    args,
    env,
    ...(cwd === undefined ? {} : { cwd }),
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).spawn();
  const stderr = new Response(child.stderr).text();
  let exited = false;
  const status = child.status.then((s) => {
    exited = true;
    return s;
  });
  const kill = () => {
    if (exited) return;
    try {
      child.kill("SIGKILL");
    } catch {
      // It exited meanwhile.
    }
  };
  const timer = setTimeout(kill, timeoutMs);
  const stop = async () => {
    clearTimeout(timer);
    kill();
    await status;
    await stderr;
  };
  const deadline = Date.now() + 10_000;
  while (!(await ready())) {
    if (exited || Date.now() > deadline) {
      await stop();
      throw new Error(`${cmd} ${args.join(" ")} did not start: ${await stderr}`);
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  return { child, stop };
}

/** Whether something accepts connections on 127.0.0.1:`port` (or the unix socket `path`). */
export async function listening(where: number | string): Promise<boolean> {
  try {
    const c = typeof where === "number"
      ? await Deno.connect({ hostname: "127.0.0.1", port: where })
      : await Deno.connect({ transport: "unix", path: where });
    c.close();
    return true;
  } catch {
    return false;
  }
}

/** A TCP port on 127.0.0.1 that is free now. */
export function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}
