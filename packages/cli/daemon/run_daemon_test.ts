import { deepStrictEqual as assertEquals, ok as assert } from "node:assert";
import { captureIo } from "../common/cli_io.ts";
import { parseDaemonArgs } from "./daemon_options.ts";
import { applyAction, createDaemon, runDaemon } from "./run_daemon.ts";
import { blockDeviceInfo } from "./block_info.ts";
import { TestQmpClient } from "./testing_qmp_client.ts";

Deno.test("parseDaemonArgs reads qemu-storage-daemon's option shapes in order", () => {
  const c = parseDaemonArgs([
    "--blockdev",
    "null-co,node-name=n0,size=1M",
    "--blockdev",
    '{"driver": "raw", "node-name": "r0", "file": "n0"}',
    "--chardev",
    "socket,path=/tmp/x.sock,server=on,wait=off,id=m0",
    "--monitor",
    "chardev=m0",
    "--monitor",
    "./qmp.sock",
    "--nbd-server",
    "addr.type=inet,addr.host=127.0.0.1,addr.port=10809",
    "--export",
    "nbd,id=e0,node-name=r0,writable=on",
  ]);
  assertEquals(c.actions.map((a) => a.kind), [
    "blockdev",
    "blockdev",
    "chardev",
    "monitor",
    "monitor-path",
    "nbd-server",
    "export",
  ]);
  assertEquals(c.actions[0]!.kind === "blockdev" && c.actions[0]!.options, {
    driver: "null-co",
    "node-name": "n0",
    size: "1M",
  });
  assertEquals(c.actions[5]!.kind === "nbd-server" && c.actions[5]!.options, {
    addr: { type: "inet", host: "127.0.0.1", port: "10809" },
  });
  assertEquals(c.actions[6]!.kind === "export" && c.actions[6]!.options.type, "nbd");
});

async function fails(args: string[]): Promise<string> {
  const io = captureIo();
  const status = await runDaemon(args, io, { signals: false });
  assertEquals(status, 1, io.stderr);
  assertEquals(io.stdout, "");
  return io.stderr;
}

Deno.test("runDaemon refuses bad options with qemu-storage-daemon's messages and status 1", async () => {
  const dir = await Deno.makeTempDir({ prefix: "bg-opts-" });
  try {
    const p = "blockgraph daemon: ";
    assertEquals(await fails(["--blockdev"]), `${p}option '--blockdev' requires an argument\n`);
    assertEquals(await fails(["--bogus"]), `${p}unrecognized option '--bogus'\n`);
    assertEquals(await fails(["-x"]), `${p}invalid option -- 'x'\n`);
    assertEquals(await fails(["extra"]), `${p}extra: Unexpected argument\n`);
    assertEquals(
      await fails(["--blockdev", "driver=nope,node-name=x"]),
      `${p}--blockdev driver=nope,node-name=x: Parameter 'driver' does not accept value 'nope'\n`,
    );
    assertEquals(
      await fails(["--blockdev", "node-name=x"]),
      `${p}--blockdev node-name=x: Parameter 'driver' is missing\n`,
    );
    // Key=value text is typed by QEMU's schema, as qemu-storage-daemon's keyval visitor does.
    assertEquals(
      await fails(["--blockdev", "driver=null-co,node-name=n,size=1M"]),
      `${p}--blockdev driver=null-co,node-name=n,size=1M: Parameter 'size' expects integer\n`,
    );
    assertEquals(
      await fails(["--blockdev", "driver=null-co,node-name=n,read-zeroes=maybe"]),
      `${p}--blockdev driver=null-co,node-name=n,read-zeroes=maybe: ` +
        "Parameter 'read-zeroes' expects 'on' or 'off'\n",
    );
    assertEquals(
      await fails(["--blockdev", "driver=file,node-name=n,filename=x,bogus=1"]),
      `${p}--blockdev driver=file,node-name=n,filename=x,bogus=1: Parameter 'bogus' is unexpected\n`,
    );
    assertEquals(
      await fails(["--blockdev", "{bad"]),
      `${p}--blockdev {bad: JSON parse error, invalid keyword 'bad'\n`,
    );
    assertEquals(
      await fails(["--nbd-server", "addr.type=inet"]),
      `${p}--nbd-server addr.type=inet: Parameter 'addr.host' is missing\n`,
    );
    assertEquals(
      await fails(["--nbd-server", "addr.type=inet,addr.host=127.0.0.1"]),
      `${p}--nbd-server addr.type=inet,addr.host=127.0.0.1: Parameter 'addr.port' is missing\n`,
    );
    assertEquals(
      await fails(["--export", "type=nbd,id=e,node-name=zz"]),
      `${p}--export type=nbd,id=e,node-name=zz: Cannot find device='' nor node-name='zz'\n`,
    );
    assertEquals(
      await fails(["--export", "type=nbd"]),
      `${p}--export type=nbd: Parameter 'id' is missing\n`,
    );
    assertEquals(
      await fails(["--export", "type=foo,id=e,node-name=x"]),
      `${p}--export type=foo,id=e,node-name=x: Parameter 'type' does not accept value 'foo'\n`,
    );
    assertEquals(
      await fails(["--monitor", "chardev=nope"]),
      `${p}--monitor chardev=nope: chardev "nope" not found\n`,
    );
    const n1 = `addr.type=unix,addr.path=${dir}/n.sock`;
    const n2 = `addr.type=unix,addr.path=${dir}/n2.sock`;
    assertEquals(
      await fails(["--nbd-server", n1, "--nbd-server", n2]),
      `${p}--nbd-server ${n2}: NBD server already running\n`,
    );
    const w = "type=nbd,id=e,node-name=n0,writable=maybe";
    assertEquals(
      await fails(["--blockdev", "driver=null-co,node-name=n0", "--nbd-server", n1, "--export", w]),
      `${p}--export ${w}: Parameter 'writable' expects 'on' or 'off'\n`,
    );
    assertEquals(
      await fails(["--drive", "id=cd0", "--drive", "id=cd0"]),
      `${p}--drive id=cd0: Duplicate ID 'cd0' for device\n`,
    );
    // A failed start leaves nothing behind: the NBD socket is gone again.
    await Deno.lstat(`${dir}/n.sock`).then(
      () => assert(false, "socket left behind"),
      (e) => assert(e instanceof Deno.errors.NotFound),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("runDaemon prints help and version", async () => {
  const io = captureIo();
  assertEquals(await runDaemon(["--help"], io, { signals: false }), 0);
  assert(io.stdout.includes("--nbd-server addr.type=inet"));
  const v = captureIo();
  assertEquals(await runDaemon(["-V"], v, { signals: false }), 0);
  assertEquals(
    v.stdout,
    "qemu-storage-daemon version 7.2.0 (blockgraph 0.1.0)\nCopyright (c) 2026 the blockgraph developers\n",
  );
});

Deno.test("runDaemon serves --chardev/--monitor and exits 0 after quit, removing its sockets", async () => {
  const dir = await Deno.makeTempDir({ prefix: "bg-run-" });
  try {
    const sock = `${dir}/m.sock`;
    const io = captureIo();
    let ready: () => void = () => {};
    const isReady = new Promise<void>((r) => (ready = r));
    const run = runDaemon(
      [
        "--blockdev",
        "driver=memory,node-name=m0,size=64k",
        "--chardev",
        `socket,path=${sock},server=on,wait=off,id=m0`,
        "--monitor",
        "chardev=m0",
        "--pidfile",
        `${dir}/pid`,
      ],
      io,
      { signals: false, onReady: () => ready() },
    );
    await isReady;
    assertEquals(await Deno.readTextFile(`${dir}/pid`), `${Deno.pid}\n`);
    const q = await TestQmpClient.connect(sock);
    const nodes = await q.ok("query-named-block-nodes") as { "node-name": string }[];
    assertEquals(nodes.map((n) => n["node-name"]), ["m0"]);
    await q.ok("quit");
    assertEquals(await run, 0, io.stderr);
    await q.close();
    for (const f of [sock, `${dir}/pid`]) {
      await Deno.lstat(f).then(
        () => assert(false, `${f} left behind`),
        (e) => assert(e instanceof Deno.errors.NotFound),
      );
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("--blockdev key=value options are typed as QEMU types them (json: names show numbers)", async () => {
  const daemon = createDaemon();
  try {
    const c = parseDaemonArgs([
      "--blockdev",
      "driver=null-co,node-name=n,size=1048576,read-zeroes=on",
    ]);
    for (const a of c.actions) await applyAction(daemon, a);
    const info = await blockDeviceInfo(daemon.graph.findNode("n")!, true);
    // qemu-storage-daemon 7.2's query-named-block-nodes names this node the same.
    assertEquals(info.file, 'json:{"read-zeroes": true, "driver": "null-co", "size": 1048576}');
  } finally {
    await daemon.shutdown();
  }
});
