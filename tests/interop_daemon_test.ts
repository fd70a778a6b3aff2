/**
 * `blockgraph daemon` as a subprocess, driven as users drive qemu-storage-daemon:
 * `--blockdev`/`--nbd-server`/`--export`/`--monitor` on the command line, qemu-img, qemu-io
 * and nbdinfo over nbd://, QMP over its socket, SIGTERM/SIGINT to stop it; then the image
 * file holds what was written (and `qemu-img check` passes for qcow2). Also `deno task
 * start`'s default configuration in a temporary data folder. Loopback and unix sockets
 * only; every process has a timeout and is killed in `finally`.
 */
import { deepStrictEqual as assertEquals, ok as assert } from "node:assert";
import { defaultRegistry } from "@blockgraph/drivers";
import { TestQmpClient } from "../packages/cli/daemon/testing_qmp_client.ts";
import { ensurePeers } from "./peers.ts";

const TIMEOUT_MS = 60_000;
const MAIN = new URL("../packages/cli/main.ts", import.meta.url).pathname;
const ROOT = new URL("..", import.meta.url).pathname;

async function peer(
  cmd: string,
  args: string[],
): Promise<{ code: number; out: string; err: string }> {
  const r = await new Deno.Command(cmd, {
    args,
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(TIMEOUT_MS),
  }).output();
  const d = new TextDecoder();
  return { code: r.code, out: d.decode(r.stdout), err: d.decode(r.stderr) };
}

async function ok(cmd: string, args: string[]): Promise<string> {
  const r = await peer(cmd, args);
  assertEquals(r.code, 0, `${cmd} ${args.join(" ")} failed: ${r.err}${r.out}`);
  return r.out;
}

function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

/** The daemon as a child process, its output collected as it comes. */
class DaemonProcess {
  readonly child: Deno.ChildProcess;
  stdout = "";
  stderr = "";
  readonly #done: Promise<void>;

  constructor(args: string[], env: Record<string, string> = {}) {
    this.child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", MAIN, "daemon", ...args],
      cwd: ROOT,
      env: { ...env, INIT_CWD: env.INIT_CWD ?? ROOT },
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const collect = async (s: ReadableStream<Uint8Array>, to: "stdout" | "stderr") => {
      for await (const chunk of s.pipeThrough(new TextDecoderStream())) this[to] += chunk;
    };
    this.#done = Promise.all([
      collect(this.child.stdout, "stdout"),
      collect(this.child.stderr, "stderr"),
    ]).then(() => {});
  }

  /** Waits until `ready()` holds (the process must stay alive meanwhile). */
  async waitFor(ready: () => Promise<boolean> | boolean, what: string): Promise<void> {
    const deadline = Date.now() + TIMEOUT_MS;
    let exited = false;
    void this.child.status.then(() => (exited = true));
    while (!(await ready())) {
      if (exited) throw new Error(`daemon exited before ${what}: ${this.stderr}`);
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}: ${this.stderr}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  /** Sends `signal` and returns the exit status. */
  async stop(signal: Deno.Signal): Promise<number> {
    this.child.kill(signal);
    const timer = setTimeout(() => this.kill(), TIMEOUT_MS);
    try {
      const s = await this.child.status;
      await this.#done;
      return s.code;
    } finally {
      clearTimeout(timer);
    }
  }

  /** Kills the process if it still runs. */
  kill(): void {
    try {
      this.child.kill("SIGKILL");
    } catch {
      // Already gone.
    }
  }

  /** Kills it and waits for it to go. */
  async dispose(): Promise<void> {
    this.kill();
    await this.child.status;
    await this.#done;
  }
}

async function exists(path: string): Promise<boolean> {
  return await Deno.lstat(path).then(() => true, () => false);
}

async function canConnect(path: string): Promise<boolean> {
  try {
    (await Deno.connect({ path, transport: "unix" })).close();
    return true;
  } catch {
    return false;
  }
}

Deno.test("daemon serves a raw file over NBD; SIGTERM flushes it and exits 0", async () => {
  await ensurePeers(["qemu-img", "qemu-io", "nbdinfo"]);
  const dir = await Deno.makeTempDir({ prefix: "bg-daemon-" });
  const img = `${dir}/disk.raw`;
  await ok("qemu-img", ["create", "-q", "-f", "raw", img, "16M"]);
  const port = freePort();
  const qmpPath = `${dir}/qmp.sock`;
  const d = new DaemonProcess([
    "--blockdev",
    `driver=file,node-name=f0,filename=${img}`,
    "--blockdev",
    "driver=raw,node-name=disk0,file=f0",
    "--nbd-server",
    `addr.type=inet,addr.host=127.0.0.1,addr.port=${port}`,
    "--export",
    "type=nbd,id=e0,node-name=disk0,name=disk,writable=on",
    "--monitor",
    qmpPath,
  ]);
  let q: TestQmpClient | null = null;
  try {
    await d.waitFor(() => canConnect(qmpPath), "the monitor socket");
    const url = `nbd://127.0.0.1:${port}/disk`;
    const info = JSON.parse(await ok("qemu-img", ["info", "--output=json", url]));
    assertEquals(info["virtual-size"], 16 << 20);
    await ok("qemu-io", [
      "-f",
      "raw",
      "-c",
      "write -P 0xab 0 64k",
      "-c",
      "write -P 0x5c 8M 4k",
      url,
    ]);
    const nbdinfo = await ok("nbdinfo", ["--json", url]);
    assertEquals(JSON.parse(nbdinfo).exports[0]["export-size"], 16 << 20);
    q = await TestQmpClient.connect(qmpPath);
    assertEquals(await q.ok("query-block-exports"), [
      { type: "nbd", id: "e0", "node-name": "disk0", "shutting-down": false },
    ]);
    assertEquals(
      (await q.fails("blockdev-del", { "node-name": "disk0" })).desc,
      "Node disk0 is in use",
    );
    assertEquals(await d.stop("SIGTERM"), 0, d.stderr);
    assertEquals(await exists(qmpPath), false);
    await ok("qemu-io", [
      "-f",
      "raw",
      "-r",
      "-c",
      "read -P 0xab 0 64k",
      "-c",
      "read -P 0x5c 8M 4k",
      img,
    ]);
  } finally {
    await q?.close();
    await d.dispose();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test({
  name: "daemon serves qcow2 over a unix socket; after QMP quit qemu-img check passes",
  ignore: !defaultRegistry().find("qcow2"),
  fn: async () => {
    await ensurePeers(["qemu-img", "qemu-io"]);
    const dir = await Deno.makeTempDir({ prefix: "bg-daemon-" });
    const img = `${dir}/disk.qcow2`;
    await ok("qemu-img", ["create", "-q", "-f", "qcow2", img, "64M"]);
    const nbdSock = `${dir}/nbd.sock`;
    const chardev = `${dir}/m.sock`;
    const d = new DaemonProcess([
      "--blockdev",
      JSON.stringify({
        driver: "qcow2",
        "node-name": "q0",
        file: { driver: "file", filename: img },
      }),
      "--nbd-server",
      `addr.type=unix,addr.path=${nbdSock}`,
      "--export",
      "nbd,id=e0,node-name=q0,writable=on",
      "--chardev",
      `socket,path=${chardev},server=on,wait=off,id=mon0`,
      "--monitor",
      "chardev=mon0",
    ]);
    try {
      await d.waitFor(() => canConnect(chardev), "the monitor socket");
      const url = `nbd+unix:///q0?socket=${nbdSock}`;
      await ok("qemu-io", [
        "-f",
        "raw",
        "-c",
        "write -P 0x11 0 1M",
        "-c",
        "write -P 0x22 40M 64k",
        "-c",
        "flush",
        url,
      ]);
      const q = await TestQmpClient.connect(chardev);
      try {
        await q.ok("quit");
      } finally {
        await q.close();
      }
      const status = await d.child.status;
      assertEquals(status.code, 0, d.stderr);
      await ok("qemu-img", ["check", img]);
      await ok("qemu-io", [
        "-f",
        "qcow2",
        "-r",
        "-c",
        "read -P 0x11 0 1M",
        "-c",
        "read -P 0x22 40M 64k",
        img,
      ]);
    } finally {
      await d.dispose();
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("deno task start's default: a disk in BLOCKGRAPH_DATA over NBD; SIGINT exits 0", async () => {
  await ensurePeers(["qemu-img", "qemu-io"]);
  const dir = await Deno.makeTempDir({ prefix: "bg-default-" });
  const d = new DaemonProcess(["--default"], { BLOCKGRAPH_DATA: `${dir}/data` });
  try {
    await d.waitFor(() => /nbd:\/\/127\.0\.0\.1:\d+\/disk/.test(d.stdout), "the banner");
    const url = /nbd:\/\/127\.0\.0\.1:\d+\/disk/.exec(d.stdout)![0];
    assert(d.stdout.includes(`QMP monitor: ${dir}/data/qmp.sock`), d.stdout);
    const info = JSON.parse(await ok("qemu-img", ["info", "--output=json", url]));
    assertEquals(info["virtual-size"], 1 << 30);
    await ok("qemu-io", ["-f", "raw", "-c", "write -P 0x77 1M 64k", url]);
    const q = await TestQmpClient.connect(`${dir}/data/qmp.sock`);
    const nodes = await q.ok("query-named-block-nodes") as { "node-name": string; drv: string }[];
    const disk = nodes.find((n) => n["node-name"] === "disk0")!;
    await q.close();
    assertEquals(await d.stop("SIGINT"), 0, d.stderr);
    const file = `${dir}/data/disk.${disk.drv}`;
    assert(await exists(file), `${file} exists`);
    assertEquals(await exists(`${dir}/data/qmp.sock`), false);
    // Sparse: a 1 GiB disk holding 64 KiB takes far less than 1 GiB.
    const st = await Deno.stat(file);
    assert((st.blocks ?? 0) * 512 < 64 << 20, `allocated ${(st.blocks ?? 0) * 512}`);
    await ok("qemu-io", ["-f", disk.drv, "-r", "-c", "read -P 0x77 1M 64k", file]);
    if (disk.drv === "qcow2") await ok("qemu-img", ["check", file]);
  } finally {
    await d.dispose();
    await Deno.remove(dir, { recursive: true });
  }
});
