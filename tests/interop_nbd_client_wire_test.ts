/**
 * Our `nbd` client and QEMU 7.2's on the wire: the same qemu-io and qemu-img command lines
 * run against one nbdkit with its log filter, which records every request each client sends;
 * the requests (command, offset, length, flags), the output and the exit status must be the
 * same. Unix sockets in temporary directories; nbdkit has a timeout and is killed in
 * `finally`.
 *
 * @module
 */

import { deepStrictEqual as assertEquals } from "node:assert";
import { runOurImg, runOurIo } from "./cli_run.ts";
import { ensurePeers } from "./peers.ts";
import { listening, type PeerResult, runPeer, spawnPeer } from "./peer_run.ts";

/** qemu-io's timing lines, which differ from run to run. */
const STATS = /^\S+ \S*, \d+ ops; .*\n/gm;

/** What a client did: its result (timing masked) and the requests nbdkit logged for it. */
interface Observed {
  result: PeerResult;
  wire: string[];
}

/** An nbdkit with the log filter: runs a command and returns the requests it logged. */
interface LoggedServer {
  /** The export's URI. */
  uri: string;
  /** The socket path. */
  sock: string;
  /** A scratch folder, removed afterwards. */
  dir: string;
  /** Runs `run` and collects the requests of the connection(s) it made. */
  observe(run: () => Promise<PeerResult>): Promise<Observed>;
}

/** The log lines that matter: requests and their errors, without times and ids. */
function requests(lines: string[]): string[] {
  return lines
    .map((l) => l.replace(/^\S+ \S+ /, "").replace(/connection=\d+ /, "").replace(/id=\d+ /, ""))
    .filter((l) => l !== "" && !/^(Ready|Fork|\.\.\.Preconnect|Preconnect)/.test(l))
    .filter((l) => !/return=0$/.test(l));
}

async function withLoggedNbdkit(
  args: string[],
  fn: (s: LoggedServer) => Promise<void>,
): Promise<void> {
  await ensurePeers(["nbdkit", "qemu-io", "qemu-img"]);
  const dir = await Deno.makeTempDir({ prefix: "nbd-wire-" });
  const sock = `${dir}/nbdkit.sock`;
  const log = `${dir}/requests.log`;
  const peer = await spawnPeer(
    "nbdkit",
    ["-f", "-U", sock, "--filter=log", ...args, `logfile=${log}`],
    () => listening(sock),
  );
  const read = async () => (await Deno.readTextFile(log)).split("\n");
  try {
    await fn({
      uri: `nbd+unix:///?socket=${sock}`,
      sock,
      dir,
      async observe(run) {
        const before = (await read()).length - 1;
        const r = await run();
        // nbdkit logs the disconnection after the client has gone: wait for it.
        let lines: string[] = [];
        for (let i = 0; i < 250; i++) {
          lines = (await read()).slice(before);
          if (lines.some((l) => l.includes(" Disconnect "))) break;
          await new Promise((res) => setTimeout(res, 20));
        }
        return {
          result: { code: r.code, out: r.out.replace(STATS, ""), err: r.err },
          wire: requests(lines),
        };
      },
    });
  } finally {
    await peer.stop();
    await Deno.remove(dir, { recursive: true });
  }
}

/** Runs qemu-`tool` and ours with `args`; asserts the same output and requests. */
async function sameAsQemu(s: LoggedServer, tool: "io" | "img", args: string[]): Promise<Observed> {
  const theirs = await s.observe(() => runPeer(`qemu-${tool}`, args));
  const ours = await s.observe(() => tool === "io" ? runOurIo(args) : runOurImg(args));
  assertEquals(ours, theirs, `${tool} ${args.join(" ")}`);
  return ours;
}

const c = (...cmds: string[]) => cmds.flatMap((x) => ["-c", x]);

Deno.test("NBD_CMD_FLUSH goes out on every flush, under cache=unsafe too, as QEMU's client sends it", async () => {
  await withLoggedNbdkit(["memory", "4M"], async (s) => {
    for (const cache of ["writeback", "unsafe"]) {
      const o = await sameAsQemu(s, "io", [
        "-f",
        "raw",
        "-t",
        cache,
        ...c("write -P 1 0 4k", "flush", "flush"),
        s.uri,
      ]);
      assertEquals(o.wire.filter((l) => l.startsWith("Flush")).length, 3, o.wire.join("\n"));
    }
    const src = `${s.dir}/src.raw`;
    const image = new Uint8Array(1 << 20);
    image.fill(7, 65536, 131072);
    await Deno.writeFile(src, image);
    // qemu-img convert's target is cache=unsafe: the data still gets flushed on the server.
    const conv = ["convert", "-n", "-f", "raw", "-O", "raw", src, s.uri];
    const theirs = await s.observe(() => runPeer("qemu-img", conv));
    const ours = await s.observe(() => runOurImg(conv));
    assertEquals(ours.result, theirs.result);
    assertEquals(theirs.wire.at(-2), "Flush ...");
    assertEquals(ours.wire.at(-2), "Flush ...", ours.wire.join("\n"));
  });
});

Deno.test("write zeroes: NO_HOLE, FAST_ZERO and the fallbacks as QEMU's client, by what the server offers", async () => {
  const cmds = c(
    "write -P 1 0 64k",
    "write -z -n 0 64k",
    "write -z -n -u 64k 64k",
    "write -z 128k 4k",
    "write -z -u 132k 4k",
    "read -P 0 0 136k",
  );
  for (
    const filter of [
      [],
      ["--filter=nozero", "zeromode=none"],
      ["--filter=nozero", "zeromode=emulate"],
      ["--filter=nozero", "fastzeromode=none"],
    ]
  ) {
    const [f, ...params] = filter;
    await withLoggedNbdkit([...(f ? [f] : []), "memory", "4M", ...params], async (s) => {
      await sameAsQemu(s, "io", ["-f", "raw", ...cmds, s.uri]);
    });
  }
});

Deno.test("requests are split and aligned to the server's block sizes as QEMU's client does", async () => {
  await withLoggedNbdkit([
    "--filter=blocksize-policy",
    "memory",
    "1M",
    "blocksize-minimum=4096",
    "blocksize-preferred=65536",
    "blocksize-maximum=65536",
    "blocksize-error-policy=error",
  ], async (s) => {
    await sameAsQemu(s, "io", [
      "-f",
      "raw",
      ...c(
        "write -P 1 100 1000",
        "read -P 1 100 1000",
        "write -P 2 0 200k",
        "write -z 5000 3000",
        "write -z -u 4096 300k",
        "discard 4096 256k",
        "read -P 0 4096 300k",
        "alloc 0 1M",
        "map",
      ),
      s.uri,
    ]);
    await sameAsQemu(s, "img", ["map", "--output=json", "-f", "raw", s.uri]);
  });
});

Deno.test("an export whose size is not whole sectors: QEMU's rounded size, zeros past the end", async () => {
  await withLoggedNbdkit(["memory", "1000"], async (s) => {
    await sameAsQemu(s, "io", [
      "-f",
      "raw",
      ...c(
        "write -P 1 100 900",
        "read -P 1 100 900",
        "write -z 500 500",
        "alloc 0 1024",
        "map",
        "read -v 990 34",
        "discard 0 1000",
      ),
      s.uri,
    ]);
    await sameAsQemu(s, "img", ["map", "--output=json", "-f", "raw", s.uri]);
    await sameAsQemu(s, "img", ["info", "-f", "raw", s.uri]);
  });
});
