/**
 * `--object tls-creds-x509,...,endpoint=client` reaching `nbd` nodes: qemu-nbd 7.2 serves an
 * image over TLS (`--object tls-creds-x509,...,endpoint=server --tls-creds tls0`), and our
 * `img info`, `img convert` and `io -c 'read -P ...'` read it with `--image-opts
 * driver=nbd,...,tls-creds=tls0`, printing what qemu-img and qemu-io print for the same command
 * lines; a missing id, a server endpoint and an object that is not TLS credentials fail with
 * their messages and exit statuses; `verify-peer=off` is honoured. Loopback only; every peer
 * process has a timeout.
 *
 * @module
 */

import { deepStrictEqual as assertEquals, ok as assert } from "node:assert";
import { runOurImg, runOurIo } from "./cli_run.ts";
import { ensurePeers } from "./peers.ts";
import { type PeerResult, runPeer } from "./peer_run.ts";
import { makeTestPki, spawnTlsQemuNbd, type TestPki } from "./tls_certs.ts";

const SIZE = 4 << 20;
const MIB = 1 << 20;

/** qemu-io's timing lines, which differ from run to run. */
const STATS = /^\S+ \S*, \d+ ops; .*$/gm;

/** A qemu-nbd serving `disk.raw` (1 MiB of 0x5a, then zeroes) over TLS as export `disk`. */
async function withTlsQemuNbd(
  fn: (ctx: { port: number; pki: TestPki; dir: string; image: Uint8Array }) => Promise<void>,
): Promise<void> {
  await ensurePeers(["qemu-nbd", "qemu-img", "qemu-io", "openssl"]);
  const pki = await makeTestPki();
  const dir = await Deno.makeTempDir({ prefix: "nbd-tls-objects-" });
  const image = new Uint8Array(SIZE);
  image.fill(0x5a, 0, MIB);
  await Deno.writeFile(`${dir}/disk.raw`, image);
  const { port, server: qnbd } = await spawnTlsQemuNbd(pki, `${dir}/disk.raw`);
  try {
    await fn({ port, pki, dir, image });
  } finally {
    await qnbd.stop();
    await pki.remove();
    await Deno.remove(dir, { recursive: true });
  }
}

function nbdOpts(port: number, extra = ""): string {
  return `driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=${port},export=disk,` +
    `tls-creds=tls0${extra}`;
}

function x509(dir: string, endpoint: string, extra = ""): string {
  return `tls-creds-x509,id=tls0,endpoint=${endpoint},dir=${dir}${extra}`;
}

/** What a command printed, with qemu-io's timing lines masked. */
function shown(r: PeerResult): PeerResult {
  return { code: r.code, out: r.out.replace(STATS, "STATS"), err: r.err };
}

Deno.test("img info, img convert and io read a qemu-nbd TLS export with --object tls-creds-x509 and tls-creds, as qemu-img and qemu-io", async () => {
  await withTlsQemuNbd(async ({ port, pki, dir, image }) => {
    for (const output of ["human", "json"]) {
      const args = [
        "info",
        `--output=${output}`,
        "--object",
        x509(pki.dir, "client"),
        "--image-opts",
        nbdOpts(port),
      ];
      const ours = await runOurImg(args);
      assertEquals(ours.code, 0, ours.err);
      if (output === "human") assertEquals(ours, await runPeer("qemu-img", args));
      else assertEquals(JSON.parse(ours.out)["virtual-size"], SIZE);
    }
    // The JSON form of --object.
    const json = JSON.stringify({
      "qom-type": "tls-creds-x509",
      id: "tls0",
      endpoint: "client",
      dir: pki.dir,
    });
    const viaJson = await runOurImg(["info", "--object", json, "--image-opts", nbdOpts(port)]);
    assertEquals(viaJson.code, 0, viaJson.err);
    const convert = await runOurImg([
      "convert",
      "-O",
      "raw",
      "--object",
      x509(pki.dir, "client"),
      "--image-opts",
      nbdOpts(port),
      `${dir}/copy.raw`,
    ]);
    assertEquals([convert.code, convert.err], [0, ""]);
    assert((await Deno.readFile(`${dir}/copy.raw`)).every((b, i) => b === image[i]), "same bytes");
    const io = [
      "--object",
      x509(pki.dir, "client"),
      "--image-opts",
      nbdOpts(port),
      "-c",
      `read -P 0x5a 0 ${MIB}`,
      "-c",
      `read -P 0 ${MIB} ${MIB}`,
    ];
    const ioOurs = shown(await runOurIo(io));
    assertEquals(ioOurs.code, 0, ioOurs.err + ioOurs.out);
    assertEquals(ioOurs, shown(await runPeer("qemu-io", io)));
  });
});

Deno.test("tls-creds naming no object, a server endpoint or another type fails as in qemu-img and qemu-io", async () => {
  await withTlsQemuNbd(async ({ port, pki }) => {
    const cases: string[][] = [
      [],
      ["--object", x509(pki.dir, "client").replace("id=tls0", "id=tls1")],
      ["--object", x509(pki.dir, "server")],
      ["--object", "secret,id=tls0,data=x"],
      ["--object", "authz-simple,id=tls0,identity=CN=client"],
    ];
    for (const objects of cases) {
      const img = ["info", ...objects, "--image-opts", nbdOpts(port)];
      const ours = await runOurImg(img);
      assertEquals([objects, ours], [objects, await runPeer("qemu-img", img)]);
      assertEquals(ours.code, 1);
      const io = [...objects, "--image-opts", nbdOpts(port), "-c", "read 0 512"];
      assertEquals([objects, await runOurIo(io)], [objects, await runPeer("qemu-io", io)]);
    }
  });
});

Deno.test("io --object checks and creates objects as qemu-io does", async () => {
  await ensurePeers(["qemu-io"]);
  const pki = await makeTestPki();
  try {
    const cases: string[][] = [
      ["--object", "bogus,id=o"],
      ["--object", "tls-creds-x509,id=t"],
      ["--object", "tls-creds-x509,id=t,dir=/nonexistent"],
      ["--object", x509(pki.dir, "client"), "--object", x509(pki.dir, "client")],
      ["--object", "secret,id=s0,data=x", "--object", "authz-simple,id=a0,identity=CN=x"],
      ["--object", "help"],
      ["--object", "tls-creds-x509,help"],
    ];
    for (const args of cases) {
      const all = [...args, "-c", "quit"];
      assertEquals([args, await runOurIo(all)], [args, await runPeer("qemu-io", all)]);
    }
  } finally {
    await pki.remove();
  }
});

Deno.test("a tls-creds-x509 object's verify-peer reaches the nbd node, as qemu-img's", async () => {
  await withTlsQemuNbd(async ({ port, pki }) => {
    for (const verify of ["", ",verify-peer=off"]) {
      const args = [
        "info",
        "--object",
        x509(pki.dir, "client", verify),
        "--image-opts",
        nbdOpts(port, ",tls-hostname=elsewhere"),
      ];
      const ours = await runOurImg(args);
      const theirs = await runPeer("qemu-img", args);
      if (verify === "") {
        // The server's certificate names localhost and 127.0.0.1, not 'elsewhere'.
        assertEquals([ours.code, theirs.code], [1, 1], ours.err);
      } else assertEquals(ours, theirs);
    }
  });
});
