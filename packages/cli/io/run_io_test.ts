import { deepStrictEqual as assertEquals, ok as assert } from "node:assert";
import { captureIo } from "../common/cli_io.ts";
import { runIo } from "./run_io.ts";

const STATS = /^\S+ \S*, \d+ ops; .*$/gm;

async function withImage(size: number, fn: (path: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/disk.img`;
    await Deno.writeFile(path, new Uint8Array(size));
    await fn(path);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

async function io(args: string[], input: string[] = []) {
  const cap = captureIo(input);
  const status = await runIo(args, cap);
  return { status, out: cap.stdout.replace(STATS, "STATS"), err: cap.stderr };
}

Deno.test("runIo writes, reads back and verifies a pattern", async () => {
  await withImage(1 << 20, async (path) => {
    const r = await io([
      "-f",
      "raw",
      "-c",
      "write -P 0xab 1 1000",
      "-c",
      "read -P 0xab 1 1000",
      "-c",
      "read -P 0xab 0 2",
      path,
    ]);
    assertEquals(r.status, 1);
    assertEquals(
      r.out,
      "wrote 1000/1000 bytes at offset 1\nSTATS\nread 1000/1000 bytes at offset 1\nSTATS\n" +
        "Pattern verification failed at offset 0, 2 bytes\nread 2/2 bytes at offset 0\nSTATS\n",
    );
    const data = await Deno.readFile(path);
    assertEquals([data[0], data[1], data[1000], data[1001]], [0, 0xab, 0xab, 0]);
  });
});

Deno.test("runIo -v dumps, map, alloc, length and info print as qemu-io", async () => {
  await withImage(1 << 20, async (path) => {
    const r = await io([
      "-f",
      "raw",
      "-c",
      "write -q -P 0x41 0 3",
      "-c",
      "read -v 0 4",
      "-c",
      "map",
      "-c",
      "alloc 0 4k",
      "-c",
      "length",
      "-c",
      "info",
      path,
    ]);
    assertEquals(r.status, 0);
    assertEquals(
      r.out,
      "00000000:  41 41 41 00  AAA.\nread 4/4 bytes at offset 0\nSTATS\n" +
        "1 MiB (0x100000) bytes     allocated at offset 0 bytes (0x0)\n" +
        "4096/4096 bytes allocated at offset 0 bytes\n1 MiB\n" +
        "format name: raw\ncluster size: 0 bytes\nvm state offset: 0 bytes\n",
    );
  });
});

Deno.test("runIo -r refuses writes with qemu-io's message and exit status", async () => {
  await withImage(65536, async (path) => {
    const r = await io(["-r", "-f", "raw", "-c", "write 0 1", "-c", "read -q 0 1", path]);
    assertEquals(r.status, 1);
    assertEquals(r.err, "qemu-io: Block node is read-only\n");
  });
});

Deno.test("runIo reports bad command arguments like qemu-io", async () => {
  await withImage(65536, async (path) => {
    const r = await io(["-f", "raw", "-c", "read -x 0 1", "-c", "read", "-c", "bogus", path]);
    assertEquals(r.status, 1);
    assertEquals(
      r.err,
      "read: invalid option -- 'x'\nbad argument count 0 to read, expected at least 2 arguments\n" +
        'command "bogus" not found\n',
    );
    assert(r.out.startsWith("read [-abCqv] [-P pattern [-s off] [-l len]] off len -- "));
  });
});

Deno.test("runIo probes the format and warns when it guesses raw", async () => {
  await withImage(65536, async (path) => {
    const r = await io(["-c", "length", path]);
    assertEquals(r.status, 0);
    assertEquals(r.out, "64 KiB\n");
    assert(r.err.startsWith(`WARNING: Image format was not specified for '${path}'`));
    const ro = await io(["-r", "-c", "length", path]);
    assertEquals(ro.err, "");
  });
});

Deno.test("runIo reads commands from standard input after a prompt", async () => {
  await withImage(65536, async (path) => {
    const r = await io(["-f", "raw", path], ["length", "", "quit", "length"]);
    assertEquals(r.status, 0);
    assertEquals(r.out, "qemu-io> 64 KiB\nqemu-io> qemu-io> ");
  });
});

Deno.test("runIo aio requests complete by aio_flush", async () => {
  await withImage(65536, async (path) => {
    const r = await io([
      "-f",
      "raw",
      "-c",
      "aio_write -P 7 512 512",
      "-c",
      "aio_flush",
      "-c",
      "aio_read -P 7 512 512",
      "-c",
      "aio_flush",
      "-c",
      "aio_read 1M 1",
      path,
    ]);
    assertEquals(r.status, 0);
    assertEquals(
      r.out,
      "wrote 512/512 bytes at offset 512\nSTATS\nread 512/512 bytes at offset 512\nSTATS\n" +
        "readv failed: Input/output error\n",
    );
  });
});

Deno.test("runIo open, close and --image-opts", async () => {
  await withImage(4096, async (path) => {
    const r = await io([
      "-c",
      `open -r -o driver=raw,file.filename=${path}`,
      "-c",
      "length",
      "-c",
      "close",
      "-c",
      "length",
    ]);
    assertEquals(r.out, "4 KiB\n");
    assertEquals(r.err, "no file open, try 'help open'\n");
    assertEquals(r.status, 1);
    const o = await io([
      "--image-opts",
      "-c",
      "length",
      `driver=raw,size=512,file.filename=${path}`,
    ]);
    assertEquals([o.status, o.out], [0, "512 bytes\n"]);
  });
});

Deno.test("runIo abort and sigraise use the injected signal raiser", async () => {
  const raised: number[] = [];
  const cap = captureIo();
  await runIo(["-c", "sigraise 15", "-c", "abort"], cap, { raise: (s) => raised.push(s) });
  assertEquals(raised, [15, 6]);
});

Deno.test("runIo refuses bad main options with usage and status 1", async () => {
  const r = await io(["-x"]);
  assertEquals(r.status, 1);
  assertEquals(r.err, "qemu-io: invalid option -- 'x'\n");
  assert(r.out.startsWith("Usage: qemu-io [OPTIONS]..."));
  const t = await io(["-t", "bogus", "x.img"]);
  assertEquals([t.status, t.err], [1, "qemu-io: Invalid cache option: bogus\n"]);
});

Deno.test("runIo --object creates objects the image's nodes find, with qemu-io's messages", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const port = (l.addr as Deno.NetAddr).port;
    l.close();
    const nbd = `driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=${port},` +
      "export=disk,tls-creds=tls0";
    await Deno.writeTextFile(`${dir}/ca-cert.pem`, "ca\n");
    const x509 = (endpoint: string) => `tls-creds-x509,id=tls0,endpoint=${endpoint},dir=${dir}`;
    const cases: [string[], string][] = [
      [["--object", "bogus,id=x"], "Parameter 'qom-type' does not accept value 'bogus'"],
      [["--object", "tls-creds-x509,id=t"], "Missing 'dir' property value"],
      [["--image-opts", nbd], "can't open: No TLS credentials with id 'tls0'"],
      [
        ["--object", x509("server"), "--image-opts", nbd],
        "can't open: " +
        "Expected TLS credentials for a client endpoint",
      ],
      [
        ["--object", "secret,id=tls0,data=x", "--image-opts", nbd],
        "can't open: " +
        "Object with id 'tls0' is not TLS credentials",
      ],
    ];
    for (const [args, message] of cases) {
      const r = await io([...args, "-c", "quit"]);
      assertEquals([args, r.status, r.err], [args, 1, `qemu-io: ${message}\n`]);
    }
    // Client credentials are found: the connection is tried (nothing listens there).
    const r = await io(["--object", x509("client"), "--image-opts", nbd, "-c", "quit"]);
    assertEquals(r.status, 1);
    assert(/^qemu-io: can't open: .*refused/i.test(r.err), r.err);
    const help = await io(["--object", "help"]);
    assertEquals([help.status, help.out.split("\n")[0]], [0, "List of user creatable objects:"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
