/**
 * NBD `tls-authz` with an `authz-simple` object against qemu-storage-daemon 7.2: the same
 * `--object`/`--nbd-server`/`--export` arguments on both daemons; nbdinfo and qemu-img with
 * client certificates (made by openssl) for the admitted identity get the export, those for
 * another identity or from an untrusted CA are dropped after the TLS handshake with the same
 * client-side errors. Also deleting the authz object refuses the next client, as QEMU does.
 * Loopback only; every peer has a timeout.
 *
 * @module
 */

import { deepStrictEqual as assertEquals } from "node:assert";
import { parseDaemonArgs } from "../packages/cli/daemon/daemon_options.ts";
import { applyAction, createDaemon } from "../packages/cli/daemon/run_daemon.ts";
import type { Daemon } from "../packages/cli/daemon/daemon.ts";
import { ensurePeers } from "./peers.ts";
import { freePort, listening, runPeer, spawnPeer } from "./peer_run.ts";
import { makeClientCreds, makeTestPki } from "./tls_certs.ts";

/** The identity QEMU's authz sees for `/C=GB/ST=London/O=Example Org/CN=alice`. */
const ALICE_DN = "C=GB,ST=London,O=Example Org,CN=alice";

function daemonArgs(serverDir: string, port: number, raw: string): string[] {
  return [
    "--object",
    `tls-creds-x509,id=tls0,endpoint=server,dir=${serverDir},verify-peer=on`,
    "--object",
    `authz-simple,id=auth0,identity=${ALICE_DN.replaceAll(",", ",,")}`,
    "--blockdev",
    `driver=file,filename=${raw},node-name=f`,
    "--nbd-server",
    `addr.type=inet,addr.host=127.0.0.1,addr.port=${port},tls-creds=tls0,tls-authz=auth0`,
    "--export",
    "type=nbd,id=e,node-name=f,name=e",
  ];
}

/** What each client gets: exit code and first line of output or error, port-free. */
async function clients(port: number, dirs: Record<string, string>): Promise<unknown> {
  const out: Record<string, unknown> = {};
  for (const [who, dir] of Object.entries(dirs)) {
    const info = await runPeer("nbdinfo", [
      `nbds://127.0.0.1:${port}/e?tls-certificates=${dir}`,
    ]);
    const img = await runPeer("qemu-img", [
      "info",
      "--object",
      `tls-creds-x509,id=tls0,endpoint=client,dir=${dir}`,
      "--image-opts",
      `driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=${port},export=e,` +
      "tls-creds=tls0",
    ]);
    const first = (r: { out: string; err: string }) =>
      (r.err || r.out).split("\n")[0]!.replaceAll(String(port), "PORT");
    out[who] = { nbdinfo: [info.code, first(info)], qemuImg: [img.code, first(img)] };
  }
  return out;
}

Deno.test("tls-authz admits only the authz-simple identity, as qemu-storage-daemon", async () => {
  await ensurePeers(["qemu-img", "nbdinfo", "openssl", "qemu-storage-daemon"]);
  const pki = await makeTestPki();
  try {
    const subject = (cn: string) => `/C=GB/ST=London/O=Example Org/CN=${cn}`;
    const dirs = {
      alice: await makeClientCreds(pki, "alice", subject("alice")),
      bob: await makeClientCreds(pki, "bob", subject("bob")),
      mallory: await makeClientCreds(pki, "mallory", subject("alice"), true),
      // Self-signed under the CA's own name: sent by the clients, refused by the signature
      // check (Deno's node:tls does not make it, see drivers/protocols/nbd/tls.ts).
      forged: await makeClientCreds(pki, "forged", "/CN=blockgraph test CA", true),
    };
    const raw = `${pki.dir}/disk.raw`;
    await Deno.writeFile(raw, new Uint8Array(1 << 20));

    const port = freePort();
    const daemon: Daemon = createDaemon();
    let mine: Record<string, { nbdinfo: [number, string] }>;
    try {
      for (const a of parseDaemonArgs(daemonArgs(pki.dir, port, raw)).actions) {
        await applyAction(daemon, a);
      }
      mine = await clients(port, dirs) as typeof mine;
      assertEquals(mine.alice!.nbdinfo[0], 0);
      assertEquals(mine.bob!.nbdinfo[0], 1);
      assertEquals(mine.mallory!.nbdinfo[0], 1);
      assertEquals(mine.forged!.nbdinfo[0], 1);
      // QEMU finds the object for each client: once deleted, nobody is admitted.
      await daemon.commands.get("object-del")!.run({ id: "auth0" }, { daemon } as never);
      const after = await runPeer("nbdinfo", [
        `nbds://127.0.0.1:${port}/e?tls-certificates=${dirs.alice}`,
      ]);
      assertEquals(after.code, 1);
    } finally {
      await daemon.shutdown();
    }

    const qport = freePort();
    const qsd = await spawnPeer(
      "qemu-storage-daemon",
      daemonArgs(pki.dir, qport, raw),
      () => listening(qport),
    );
    try {
      const theirs = await clients(qport, dirs);
      assertEquals(mine, theirs);
    } finally {
      await qsd.stop();
    }
  } finally {
    await pki.remove();
  }
});
