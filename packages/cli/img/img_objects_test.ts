import { deepStrictEqual as assertEquals } from "node:assert";
import { captureIo } from "../common/cli_io.ts";
import { ImgObjects } from "./img_objects.ts";

/** Adds each definition in turn to one run's objects: the statuses and what was printed. */
function run(...defs: string[]) {
  const io = captureIo();
  const objects = new ImgObjects();
  const statuses = defs.map((d) => objects.add(io, d));
  return { statuses, out: io.stdout, err: io.stderr };
}

Deno.test("ImgObjects.add accepts a secret and refuses a second object with its id", () => {
  assertEquals(run("secret,id=s0,data=x", "secret,id=s0,data=y"), {
    statuses: [null, 1],
    out: "",
    err: "qemu-img: attempt to add duplicate property 's0' to object (type 'container')\n",
  });
});

Deno.test("ImgObjects.add checks the type, the id, the keys and a secret's source in QEMU's order", () => {
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

Deno.test("ImgObjects.add prints the type list or a type's keys for help and exits 0", () => {
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
