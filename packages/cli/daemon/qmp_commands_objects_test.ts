import { deepStrictEqual as assertEquals, ok as assert, rejects } from "node:assert";
import { makeTestPki } from "../../../tests/tls_certs.ts";
import { runPeer } from "../../../tests/peer_run.ts";
import { ensurePeers } from "../../../tests/peers.ts";
import { parseDaemonArgs } from "./daemon_options.ts";
import { applyAction, createDaemon } from "./run_daemon.ts";
import type { Daemon } from "./daemon.ts";

async function apply(daemon: Daemon, args: string[]): Promise<void> {
  for (const a of parseDaemonArgs(args).actions) await applyAction(daemon, a);
}

async function objectDel(daemon: Daemon, id: string): Promise<void> {
  await daemon.commands.get("object-del")!.run({ id }, { daemon });
}

Deno.test("daemon --object tls-creds-x509 and --nbd-server tls-creds serve TLS; nbd nodes use tls-creds", async () => {
  await ensurePeers(["qemu-img"]);
  const pki = await makeTestPki();
  const daemon = createDaemon();
  try {
    await apply(daemon, [
      "--object",
      `tls-creds-x509,id=tls0,endpoint=server,dir=${pki.dir}`,
      "--object",
      `tls-creds-x509,id=tlsc,endpoint=client,dir=${pki.dir},verify-peer=on`,
      "--blockdev",
      "memory,node-name=m0,size=1M",
      "--nbd-server",
      "addr.type=inet,addr.host=127.0.0.1,addr.port=0,tls-creds=tls0",
      "--export",
      "nbd,id=e0,node-name=m0,name=disk,writable=on",
    ]);
    const a = daemon.nbd!.address;
    const port = a.type === "inet" ? a.port : 0;
    const info = await runPeer("qemu-img", [
      "info",
      "--output=json",
      "--object",
      `tls-creds-x509,id=tls0,endpoint=client,dir=${pki.dir}`,
      "--image-opts",
      `driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=${port},export=disk,` +
      "tls-creds=tls0",
    ]);
    assertEquals(info.code, 0, info.err);
    assertEquals(JSON.parse(info.out)["virtual-size"], 1 << 20);
    const plain = await runPeer("qemu-img", ["info", `nbd://127.0.0.1:${port}/disk`]);
    assert(plain.code !== 0, "plain clients are refused");
    await apply(daemon, [
      "--blockdev",
      `nbd,node-name=n0,server.type=inet,server.host=127.0.0.1,server.port=${port},` +
      "export=disk,tls-creds=tlsc",
    ]);
    const n0 = daemon.graph.findNode("n0")!;
    await n0.write(0, new Uint8Array(4096).fill(3));
    const back = new Uint8Array(4096);
    await daemon.graph.findNode("m0")!.read(0, back);
    assertEquals(back[4095], 3, "written through the daemon's own TLS client");
    assertEquals(daemon.graph.objects.get("tlsc")?.["verify-peer"], true, "kept in the graph");
    // As QEMU 7.2: the object an nbd node uses can be deleted, and the node goes on with the
    // credentials it loaded; later nodes no longer find it. The server's are refused.
    await objectDel(daemon, "tlsc");
    await n0.write(4096, new Uint8Array(4096).fill(4));
    await rejects(
      () =>
        apply(daemon, [
          "--blockdev",
          `nbd,node-name=n2,server.type=inet,server.host=127.0.0.1,server.port=${port},` +
          "export=disk,tls-creds=tlsc",
        ]),
      /No TLS credentials with id 'tlsc'/,
    );
    await rejects(() => objectDel(daemon, "tls0"), /object 'tls0' is in use, can not be deleted/);
    await rejects(() => objectDel(daemon, "tlsc"), /object 'tlsc' not found/);
    // The node is the server's own client: it goes before the server does.
    await daemon.graph.blockdevDel("n0");
    await rejects(
      () =>
        apply(daemon, [
          "--blockdev",
          `nbd,node-name=n1,server.type=inet,server.host=127.0.0.1,server.port=${port},tls-creds=tls0`,
        ]),
      /Expected TLS credentials for a client endpoint/,
    );
  } finally {
    await daemon.shutdown();
    await pki.remove();
  }
});

Deno.test("daemon TLS options are refused with QEMU's messages", async () => {
  const pki = await makeTestPki();
  const daemon = createDaemon();
  try {
    await apply(daemon, ["--object", `tls-creds-x509,id=tlsc,endpoint=client,dir=${pki.dir}`]);
    const nbd = (creds: string) => [
      "--nbd-server",
      `addr.type=inet,addr.host=127.0.0.1,addr.port=0,tls-creds=${creds}`,
    ];
    await rejects(() => apply(daemon, nbd("nope")), /No TLS credentials with id 'nope'/);
    await rejects(
      () => apply(daemon, nbd("tlsc")),
      /Expected TLS credentials for a server endpoint/,
    );
    await rejects(
      () => apply(daemon, ["--object", `tls-creds-x509,id=tlsc,endpoint=client,dir=${pki.dir}`]),
      /duplicate property 'tlsc'/,
    );
    // One namespace for every type, as QEMU's /objects.
    await rejects(
      () => apply(daemon, ["--object", "authz-simple,id=tlsc,identity=CN=x"]),
      /duplicate property 'tlsc'/,
    );
    await apply(daemon, ["--object", "authz-simple,id=auth0,identity=CN=x"]);
    await rejects(
      () => apply(daemon, nbd("auth0")),
      /Object with id 'auth0' is not TLS credentials/,
    );
    await rejects(
      () => apply(daemon, ["--object", `tls-creds-x509,id=t2,endpoint=server,dir=${pki.dir}/none`]),
      /Unable to access credentials .*none\/ca-cert.pem: No such file or directory/,
    );
    await rejects(
      () => apply(daemon, ["--object", "iothread,id=io0"]),
      /only secret, tls-creds-x509 and authz-simple are supported/,
    );
    // Secrets (a qcow2 node's encrypt.key-secret), checked as QEMU completes them.
    await apply(daemon, ["--object", "secret,id=s0,data=pass"]);
    assertEquals(daemon.graph.objects.get("s0")?.data, "pass");
    await rejects(
      () => apply(daemon, ["--object", "secret,id=s1,data=x,file=/nonexistent"]),
      /'file' and 'data' are mutually exclusive/,
    );
    await rejects(
      () => apply(daemon, ["--object", "secret,id=s2,data=x,keyid=nope,iv=AAAA"]),
      /No secret with id 'nope'/,
    );
    assertEquals(daemon.graph.objects.has("s2"), false);
    assertEquals(daemon.nbd, null);
  } finally {
    await daemon.shutdown();
    await pki.remove();
  }
});
