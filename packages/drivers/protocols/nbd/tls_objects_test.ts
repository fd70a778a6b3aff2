import { Graph } from "@blockgraph/core";
import { deepStrictEqual as assertEquals } from "node:assert";
import { assertRejectsWith } from "../../conformance/mod.ts";
import { defaultRegistry } from "../../mod.ts";
import { findX509Creds } from "./tls_objects.ts";

/** A directory with stand-in PEM files (their contents are only read here, not parsed). */
async function pemDir(): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "tls-objects-" });
  for (const f of ["ca-cert", "client-cert", "client-key", "server-cert", "server-key"]) {
    await Deno.writeTextFile(`${dir}/${f}.pem`, `${f}\n`);
  }
  return dir;
}

Deno.test("findX509Creds loads a tls-creds-x509 object's files from its dir and honours verify-peer", async () => {
  const dir = await pemDir();
  try {
    const graph = new Graph({ registry: defaultRegistry() });
    graph.objects.add({ "qom-type": "tls-creds-x509", id: "c0", endpoint: "client", dir });
    graph.objects.add({ "qom-type": "tls-creds-x509", id: "c1", dir, "verify-peer": "off" });
    graph.objects.add({ "qom-type": "tls-creds-x509", id: "c2", dir, "verify-peer": false });
    graph.objects.add({ "qom-type": "tls-creds-x509", id: "s0", endpoint: "server", dir });
    const c0 = await findX509Creds(graph, "c0", "client");
    assertEquals(
      [c0.id, c0.endpoint, c0.dir, c0.verifyPeer, c0.ca, c0.cert, c0.key],
      ["c0", "client", dir, true, "ca-cert\n", "client-cert\n", "client-key\n"],
    );
    // The endpoint defaults to client, as QEMU's.
    assertEquals((await findX509Creds(graph, "c1", "client")).verifyPeer, false);
    assertEquals((await findX509Creds(graph, "c2", "client")).verifyPeer, false);
    const s0 = await findX509Creds(graph, "s0", "server");
    assertEquals([s0.endpoint, s0.cert, s0.key], ["server", "server-cert\n", "server-key\n"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("findX509Creds refuses with QEMU's messages, in QEMU's order", async () => {
  const dir = await pemDir();
  try {
    const graph = new Graph({ registry: defaultRegistry() });
    graph.objects.add({ "qom-type": "secret", id: "sec0", data: "x" });
    graph.objects.add({ "qom-type": "tls-creds-x509", id: "s0", endpoint: "server", dir });
    graph.objects.add({ "qom-type": "tls-creds-anon", id: "a0", endpoint: "server" });
    graph.objects.add({ "qom-type": "tls-creds-anon", id: "a1", endpoint: "client" });
    graph.objects.add({ "qom-type": "tls-cipher-suites", id: "p0", priority: "NORMAL" });
    graph.objects.add({ "qom-type": "tls-creds-x509", id: "nodir" });
    graph.objects.add({ "qom-type": "tls-creds-x509", id: "gone", dir: `${dir}/none` });
    const cases: [string, string, string][] = [
      ["tls9", "EINVAL", "No TLS credentials with id 'tls9'"],
      ["sec0", "EINVAL", "Object with id 'sec0' is not TLS credentials"],
      ["s0", "EINVAL", "Expected TLS credentials for a client endpoint"],
      ["a0", "EINVAL", "Expected TLS credentials for a client endpoint"],
      ["a1", "ENOTSUP", "Unsupported TLS credentials type tls-creds-anon"],
      ["p0", "ENOTSUP", "Unsupported TLS credentials type tls-cipher-suites"],
      ["nodir", "EINVAL", "Missing 'dir' property value"],
      [
        "gone",
        "EINVAL",
        `Unable to access credentials ${dir}/none/ca-cert.pem: No such file or directory`,
      ],
    ];
    for (const [id, code, message] of cases) {
      const e = await assertRejectsWith(findX509Creds(graph, id, "client"), code as "EINVAL", id);
      assertEquals(e.message, message, id);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
