/**
 * What our `nbd` client says when it cannot open an export, against what QEMU 7.2's says for
 * the same command line: no server on a port or socket, a host that does not resolve, an
 * export name the server does not have, a read-only export opened for writing, a server that
 * requires TLS and a client with TLS credentials against a server without. qemu-io and
 * qemu-img print the message (and QEMU's hints below it) and exit 1; ours must print the
 * same. qemu-nbd and nbdkit on unix sockets in temporary directories.
 *
 * @module
 */

import { sameAsQemu } from "./cli_run.ts";
import { ensurePeers } from "./peers.ts";
import { freePort, listening, spawnPeer } from "./peer_run.ts";
import { makeTestPki } from "./tls_certs.ts";

Deno.test("nbd open failures: connection, export name and read-only export, in QEMU's words", async () => {
  await ensurePeers(["qemu-nbd", "qemu-io", "qemu-img"]);
  const dir = await Deno.makeTempDir({ prefix: "nbd-messages-" });
  const sock = `${dir}/nbd.sock`;
  const roSock = `${dir}/ro.sock`;
  await Deno.writeFile(`${dir}/disk.raw`, new Uint8Array(1 << 20));
  await Deno.writeFile(`${dir}/src.raw`, new Uint8Array(1 << 20));
  const qnbd = (s: string, extra: string[]) =>
    spawnPeer(
      "qemu-nbd",
      ["-k", s, "-x", "disk", "-t", "-f", "raw", ...extra, `${dir}/disk.raw`],
      () => listening(s),
    );
  const rw = await qnbd(sock, ["--shared=4"]);
  const ro = await qnbd(roSock, ["-r", "--shared=4"]);
  try {
    const port = freePort();
    await sameAsQemu("io", ["-c", "read 0 1", `nbd://127.0.0.1:${port}/disk`]);
    await sameAsQemu("img", ["info", `nbd://127.0.0.1:${port}`]);
    await sameAsQemu("img", ["info", `nbd+unix:///disk?socket=${dir}/none.sock`]);
    await sameAsQemu("img", ["info", "nbd://nosuchhost.invalid:10809/disk"]);
    await sameAsQemu("img", ["info", `nbd+unix:///nosuch?socket=${sock}`]);
    await sameAsQemu("io", ["-c", "read 0 1", `nbd+unix:///?socket=${sock}`]);
    await sameAsQemu("io", ["-c", "write 0 512", `nbd+unix:///disk?socket=${roSock}`]);
    await sameAsQemu("img", [
      "convert",
      "-n",
      "-O",
      "raw",
      `${dir}/src.raw`,
      `nbd+unix:///disk?socket=${roSock}`,
    ]);
  } finally {
    await rw.stop();
    await ro.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("nbd open failures around TLS: a server requiring it, one without it, its certificate refused", async () => {
  await ensurePeers(["qemu-nbd", "qemu-io", "qemu-img", "nbdkit", "openssl"]);
  const pki = await makeTestPki();
  const other = await makeTestPki();
  const dir = await Deno.makeTempDir({ prefix: "nbd-messages-tls-" });
  const tlsSock = `${dir}/tls.sock`;
  const plainSock = `${dir}/plain.sock`;
  const kit = await spawnPeer(
    "nbdkit",
    ["-f", "-U", tlsSock, "--tls=require", `--tls-certificates=${pki.dir}`, "memory", "1M"],
    () => listening(tlsSock),
  );
  const plain = await spawnPeer(
    "nbdkit",
    ["-f", "-U", plainSock, "memory", "1M"],
    () => listening(plainSock),
  );
  try {
    await sameAsQemu("io", ["-c", "read 0 1", `nbd+unix:///?socket=${tlsSock}`]);
    await sameAsQemu("img", ["info", `nbd+unix:///?socket=${tlsSock}`]);
    const io = (creds: string, opts: string) =>
      sameAsQemu("io", [
        "--object",
        `tls-creds-x509,id=t0,endpoint=client,dir=${creds}`,
        "--image-opts",
        "-c",
        "read 0 1",
        `driver=nbd,server.type=unix,${opts},tls-creds=t0`,
      ]);
    await io(pki.dir, `server.path=${plainSock}`);
    // The server's certificate: checked against the CA, for the host name (which a unix
    // socket does not give: tls-hostname must).
    await io(pki.dir, `server.path=${tlsSock},tls-hostname=localhost`);
    await io(pki.dir, `server.path=${tlsSock}`);
    await io(pki.dir, `server.path=${tlsSock},tls-hostname=elsewhere.example`);
    await io(other.dir, `server.path=${tlsSock},tls-hostname=localhost`);
  } finally {
    await kit.stop();
    await plain.stop();
    await pki.remove();
    await other.remove();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("an export past QEMU's largest image size is refused in QEMU's words", async () => {
  await ensurePeers(["nbdkit", "qemu-img"]);
  const dir = await Deno.makeTempDir({ prefix: "nbd-messages-big-" });
  const sock = `${dir}/big.sock`;
  const kit = await spawnPeer(
    "nbdkit",
    ["-f", "-U", sock, "memory", `${2n ** 63n - 512n}`],
    () => listening(sock),
  );
  try {
    await sameAsQemu("img", ["info", `nbd+unix:///?socket=${sock}`]);
  } finally {
    await kit.stop();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("nbd filenames: QEMU's URIs and its legacy nbd: syntax, and the filename info shows", async () => {
  await ensurePeers(["nbdkit", "qemu-img"]);
  const dir = await Deno.makeTempDir({ prefix: "nbd-messages-uri-" });
  const sock = `${dir}/kit.sock`;
  const kit = await spawnPeer(
    "nbdkit",
    ["-f", "-U", sock, "memory", "1M"],
    () => listening(sock),
  );
  try {
    for (
      const f of [
        `nbd+unix:///a%2Fb%20c?socket=${sock}`,
        `nbd+unix:///?socket=${sock}`,
        `nbd:unix:${sock}`,
        `nbd:unix:${sock}:exportname=x y`,
        `nbd:unix:${sock}:exportname=`,
        "nbd:",
        "nbd::10809",
        "nbd:localhost",
        "nbd://127.0.0.1/x?foo=1",
        `nbd+unix:///x?socket=${sock}&a=b`,
        "nbd+unix:///x",
        "nbd+unix://host/x?socket=/a",
        "nbd://127.0.0.1:abc/",
      ]
    ) {
      await sameAsQemu("img", ["info", f]);
    }
    for (
      const o of [
        "driver=nbd,server.path=/x",
        "driver=nbd,server.type=unix",
        "driver=nbd,server.type=inet",
        "driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=abc",
      ]
    ) {
      await sameAsQemu("img", ["info", "--image-opts", o]);
    }
  } finally {
    await kit.stop();
    await Deno.remove(dir, { recursive: true });
  }
});
