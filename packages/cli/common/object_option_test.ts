import { deepStrictEqual as assertEquals } from "node:assert";
import { Graph } from "@blockgraph/core";
import { defaultRegistry } from "@blockgraph/drivers";
import { captureIo } from "./cli_io.ts";
import { addObjectOption } from "./object_option.ts";

/** Adds each definition in turn to one graph's objects: the statuses and what was printed. */
function run(...defs: string[]) {
  const { statuses, out, err } = runIn(new Graph({ registry: defaultRegistry() }), ...defs);
  return { statuses, out, err };
}

function runIn(graph: Graph, ...defs: string[]) {
  const io = captureIo();
  const report = (m: string) => io.err(`qemu-img: ${m}\n`);
  const statuses = defs.map((d) => addObjectOption(graph, io, d, report));
  return { statuses, out: io.stdout, err: io.stderr, graph };
}

Deno.test("addObjectOption puts the definition in the graph's objects, as given", async () => {
  const dir = await Deno.makeTempDir({ prefix: "object-option-" });
  try {
    await Deno.writeTextFile(`${dir}/ca-cert.pem`, "ca\n");
    const r = runIn(
      new Graph({ registry: defaultRegistry() }),
      `tls-creds-x509,id=tls0,endpoint=client,dir=${dir},verify-peer=off`,
      '{"qom-type": "authz-simple", "id": "a0", "identity": "CN=x"}',
      "secret,id=s0,data=x,keyid=a0,iv=AAAAAAAAAAAAAAAAAAAAAA==",
    );
    assertEquals(r.statuses, [null, null, 1]);
    assertEquals(r.err, "qemu-img: Object with id 'a0' is not a secret\n");
    assertEquals([...r.graph.objects], [
      { "qom-type": "tls-creds-x509", id: "tls0", endpoint: "client", dir, "verify-peer": "off" },
      { "qom-type": "authz-simple", id: "a0", identity: "CN=x" },
    ]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("addObjectOption reports to the caller's error_report with the failure status", () => {
  const io = captureIo();
  const graph = new Graph({ registry: defaultRegistry() });
  const status = addObjectOption(graph, io, "bogus,id=x", (m) => io.err(`qemu-io: ${m}\n`), 2);
  assertEquals([status, io.stderr], [
    2,
    "qemu-io: Parameter 'qom-type' does not accept value 'bogus'\n",
  ]);
  assertEquals(graph.objects.size, 0);
});

Deno.test("addObjectOption accepts a secret and refuses a second object with its id", () => {
  assertEquals(run("secret,id=s0,data=x", "secret,id=s0,data=y"), {
    statuses: [null, 1],
    out: "",
    err: "qemu-img: attempt to add duplicate property 's0' to object (type 'container')\n",
  });
});

Deno.test("addObjectOption checks the type, the id, the keys and a secret's source in QEMU's order", () => {
  const cases: [string, string][] = [
    ["bogus,id=o", "Parameter 'qom-type' does not accept value 'bogus'"],
    ["secret,data=x", "Parameter 'id' is missing"],
    ["secret,id=s,data=x,bad=1", "Parameter 'bad' is unexpected"],
    ["secret,id=1a,data=x,format=hex", "Parameter 'format' does not accept value 'hex'"],
    [
      "secret,id=1a,data=x",
      "Parameter 'id' expects an identifier\n" +
      "Identifiers consist of letters, digits, '-', '.', '_', starting with a letter.",
    ],
    ["secret,id=s", "Either 'file' or 'data' must be provided"],
    ["secret,id=s,data=x,file=y", "'file' and 'data' are mutually exclusive"],
    ["authz-simple,id=a", "Parameter 'identity' is missing"],
    ["iothread,id=i", "invalid object type: iothread"],
    ["tls-creds-x509,id=t", "Missing 'dir' property value"],
    ["secret,,id=s", "Invalid parameter ''"],
    ["secret,help=on", "Parameter 'id' is missing"],
  ];
  for (const [def, message] of cases) {
    assertEquals([def, run(def)], [def, { statuses: [1], out: "", err: `qemu-img: ${message}\n` }]);
  }
});

Deno.test("addObjectOption prints the type list or a type's keys for help and exits 0", () => {
  const list = run("help");
  assertEquals(list.statuses, [0]);
  assertEquals(list.out.split("\n")[0], "List of user creatable objects:");
  assertEquals(list.out.includes("  secret\n  secret_keyring\n"), true);
  assertEquals(run("authz-simple,help"), {
    statuses: [0],
    out: "authz-simple options:\n  identity=<string>\n",
    err: "",
  });
  assertEquals(run("bogus,?").out, list.out);
});
