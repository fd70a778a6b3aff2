import { deepStrictEqual as assertEquals } from "node:assert";
import { captureIo } from "../common/cli_io.ts";
import { runImg } from "./run_img.ts";

async function img(args: string[], cwd?: string) {
  const cap = captureIo();
  const status = await runImg(cwd ? args.map((a) => a.replace("DIR", cwd)) : args, cap);
  return { status, out: cap.stdout, err: cap.stderr };
}

Deno.test("img create formats a raw image of the given size", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const r = await img(["create", "-f", "raw", "DIR/a.img", "1.5k"], dir);
    assertEquals(r, { status: 0, out: `Formatting '${dir}/a.img', fmt=raw size=1536\n`, err: "" });
    assertEquals((await Deno.stat(`${dir}/a.img`)).size, 1536);
    const q = await img(["create", "-q", "-o", "size=2M,preallocation=full", "DIR/b.img"], dir);
    assertEquals(q, { status: 0, out: "", err: "" });
    assertEquals((await Deno.stat(`${dir}/b.img`)).size, 2 << 20);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("img create reports errors as qemu-img", async () => {
  assertEquals(await img(["create", "-f", "raw", "x.img"]), {
    status: 1,
    out: "",
    err: "qemu-img: x.img: Image creation needs a size parameter\n",
  });
  assertEquals(
    (await img(["create", "-f", "raw", "x.img", "1x"])).err,
    "qemu-img: Invalid image size specified. You may use k, M, G, T, P or E suffixes for\n" +
      "qemu-img: kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.\n",
  );
  assertEquals(
    (await img(["create", "-f", "raw", "-o", "foo=1", "x.img", "1M"])).err,
    "qemu-img: x.img: Invalid parameter 'foo'\n",
  );
  assertEquals(
    (await img(["create", "-x"])).err,
    "qemu-img: unrecognized option '-x'\nTry 'qemu-img --help' for more information\n",
  );
  assertEquals((await img(["bogus"])).status, 1);
});

Deno.test("img info prints human and JSON output as qemu-img", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/a.img`;
    await Deno.writeFile(path, new Uint8Array(4096).fill(1));
    await Deno.truncate(path, 1 << 20);
    const h = await img(["info", path]);
    assertEquals(h.status, 0);
    assertEquals(
      h.out,
      `image: ${path}\nfile format: raw\nvirtual size: 1 MiB (1048576 bytes)\ndisk size: 4 KiB\n`,
    );
    const j = await img(["info", "--output=json", "-f", "raw", path]);
    assertEquals(
      j.out,
      `{\n    "virtual-size": 1048576,\n    "filename": "${path}",\n    "format": "raw",\n` +
        `    "actual-size": 4096,\n    "dirty-flag": false\n}\n`,
    );
    assertEquals(
      (await img(["info", "--output=xml", path])).err,
      "qemu-img: --output must be used with human or json as argument.\n",
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
