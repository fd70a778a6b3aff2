import { deepStrictEqual as assertEquals } from "node:assert";
import { Graph } from "@blockgraph/core";
import { defaultRegistry } from "@blockgraph/drivers";
import { captureIo } from "../common/cli_io.ts";
import { runImg } from "./run_img.ts";

async function img(args: string[], dir: string) {
  const cap = captureIo();
  const status = await runImg(args.map((a) => a.replaceAll("DIR", dir)), cap);
  return { status, out: cap.stdout, err: cap.stderr };
}

/** The persistent bitmaps of a qcow2 image as a fresh open loads them. */
async function bitmapsOf(path: string) {
  const graph = new Graph({ registry: defaultRegistry() });
  const node = await graph.open({
    driver: "qcow2",
    "read-only": true,
    file: { driver: "file", filename: path },
  }, "t");
  try {
    return node.dirtyBitmaps.map((b) => ({
      name: b.name,
      granularity: b.granularity,
      enabled: b.enabled,
      count: b.count,
    }));
  } finally {
    await node.unref("t");
    await graph.closeAll();
  }
}

async function withImages(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir();
  try {
    for (const name of ["a", "s"]) {
      const r = await img(["create", "-q", "-f", "qcow2", `DIR/${name}.qcow2`, "4M"], dir);
      assertEquals(r.status, 0);
    }
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

const ok = { status: 0, out: "", err: "" };
const fail = (err: string) => ({ status: 1, out: "", err: `qemu-img: ${err}\n` });

Deno.test("img bitmap applies its actions in order and the image keeps them", async () => {
  await withImages(async (dir) => {
    assertEquals(await img(["bitmap", "--add", "DIR/a.qcow2", "b0"], dir), ok);
    assertEquals(await img(["bitmap", "--add", "-g", "4k", "DIR/a.qcow2", "b1"], dir), ok);
    assertEquals(await img(["bitmap", "--add", "--disable", "DIR/a.qcow2", "b2"], dir), ok);
    assertEquals(await bitmapsOf(`${dir}/a.qcow2`), [
      { name: "b0", granularity: 65536, enabled: true, count: 0 },
      { name: "b1", granularity: 4096, enabled: true, count: 0 },
      { name: "b2", granularity: 65536, enabled: false, count: 0 },
    ]);
    // --add --remove --add leaves a fresh bitmap; --enable, --disable, --remove.
    assertEquals(await img(["bitmap", "--add", "--remove", "--add", "DIR/a.qcow2", "c"], dir), ok);
    assertEquals(await img(["bitmap", "--enable", "DIR/a.qcow2", "b2"], dir), ok);
    assertEquals(await img(["bitmap", "--disable", "DIR/a.qcow2", "b1"], dir), ok);
    assertEquals(await img(["bitmap", "--remove", "DIR/a.qcow2", "b0"], dir), ok);
    assertEquals((await bitmapsOf(`${dir}/a.qcow2`)).map((b) => [b.name, b.enabled]), [
      ["b1", false],
      ["b2", true],
      ["c", true],
    ]);
  });
});

Deno.test("img bitmap --merge takes bits from the image or from -b, --clear drops them", async () => {
  await withImages(async (dir) => {
    assertEquals(await img(["bitmap", "--add", "DIR/s.qcow2", "sb"], dir), ok);
    // Written through blockgraph io: the enabled bitmap records it.
    const graph = new Graph({ registry: defaultRegistry() });
    const node = await graph.open({
      driver: "qcow2",
      file: { driver: "file", filename: `${dir}/s.qcow2` },
    }, "t");
    await node.write(1 << 20, new Uint8Array(65536).fill(1));
    await node.unref("t");
    await graph.closeAll();
    assertEquals(await img(["bitmap", "--add", "-g", "512", "DIR/a.qcow2", "m"], dir), ok);
    assertEquals(
      await img(
        ["bitmap", "--merge", "sb", "-b", "DIR/s.qcow2", "-F", "qcow2", "DIR/a.qcow2", "m"],
        dir,
      ),
      ok,
    );
    assertEquals(await img(["bitmap", "--add", "--merge", "m", "DIR/a.qcow2", "n"], dir), ok);
    assertEquals((await bitmapsOf(`${dir}/a.qcow2`)).map((b) => [b.name, b.count]), [
      ["m", 65536],
      ["n", 65536],
    ]);
    assertEquals(await img(["bitmap", "--clear", "DIR/a.qcow2", "m"], dir), ok);
    assertEquals((await bitmapsOf(`${dir}/a.qcow2`)).map((b) => [b.name, b.count]), [
      ["m", 0],
      ["n", 65536],
    ]);
  });
});

Deno.test("img bitmap reports qemu-img's errors and stops at the first failing action", async () => {
  await withImages(async (dir) => {
    assertEquals(
      await img(["bitmap", "DIR/a.qcow2", "b0"], dir),
      fail("Need at least one of --add, --remove, --clear, --enable, --disable, or --merge"),
    );
    assertEquals(
      await img(["bitmap", "--add", "DIR/a.qcow2"], dir),
      fail("Expecting filename and bitmap name"),
    );
    assertEquals(
      await img(["bitmap", "--clear", "-g", "4k", "DIR/a.qcow2", "b"], dir),
      fail("granularity only supported with --add"),
    );
    assertEquals(
      await img(["bitmap", "--clear", "-F", "raw", "DIR/a.qcow2", "b"], dir),
      fail("-F only supported with -b"),
    );
    assertEquals(
      await img(["bitmap", "--clear", "-b", "x", "DIR/a.qcow2", "b"], dir),
      fail("Merge bitmap source file only supported with --merge"),
    );
    assertEquals(
      (await img(["bitmap", "--add", "-g", "1x", "DIR/a.qcow2", "b"], dir)).err,
      "qemu-img: Invalid granularity specified. You may use k, M, G, T, P or E suffixes for\n" +
        "qemu-img: kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.\n",
    );
    for (const g of ["1000", "256", "4G"]) {
      assertEquals(
        await img(["bitmap", "--add", "-g", g, "DIR/a.qcow2", "b"], dir),
        fail("Operation add on bitmap b failed: Granularity must be power of 2 and at least 512"),
      );
    }
    // 4G + 512 wraps to 512, as qemu-img's uint32 does.
    assertEquals(await img(["bitmap", "--add", "-g", "4294967808", "DIR/a.qcow2", "w"], dir), ok);
    assertEquals(
      await img(["bitmap", "--add", "DIR/a.qcow2", ""], dir),
      fail("Operation add on bitmap  failed: Bitmap name cannot be empty"),
    );
    for (const op of ["remove", "clear", "enable", "disable"]) {
      assertEquals(
        await img(["bitmap", `--${op}`, "DIR/a.qcow2", "nob"], dir),
        fail(`Operation ${op} on bitmap nob failed: Dirty bitmap 'nob' not found`),
      );
    }
    assertEquals(
      await img(["bitmap", "--merge", "x", "DIR/a.qcow2", "w"], dir),
      fail("Operation merge on bitmap w failed: Dirty bitmap 'x' not found"),
    );
    // The add before the failing action stays.
    assertEquals(
      await img(["bitmap", "--add", "--add", "DIR/a.qcow2", "d"], dir),
      fail("Operation add on bitmap d failed: Bitmap already exists: d"),
    );
    assertEquals((await bitmapsOf(`${dir}/a.qcow2`)).map((b) => b.name), ["w", "d"]);
    const raw = await img(["bitmap", "--add", "-f", "raw", "DIR/a.qcow2", "r"], dir);
    assertEquals(raw.status, 1);
    assertEquals(
      raw.err.replace(/#block\d+/, "#blockN"),
      "qemu-img: Operation add on bitmap r failed: Can't store persistent bitmaps to #blockN: " +
        "Operation not supported\n",
    );
    assertEquals(
      await img(["bitmap", "--object", "bogus,id=x", "--add", "DIR/a.qcow2", "o"], dir),
      fail("Parameter 'qom-type' does not accept value 'bogus'"),
    );
    assertEquals(
      await img(["bitmap", "--object", "secret,id=s", "--add", "DIR/a.qcow2", "o"], dir),
      fail("Either 'file' or 'data' must be provided"),
    );
    assertEquals(
      await img(["bitmap", "--image-opts", "-f", "qcow2", "--add", "driver=qcow2", "o"], dir),
      fail("--image-opts and --format are mutually exclusive"),
    );
    assertEquals(
      await img([
        "bitmap",
        "--object",
        "secret,id=s,data=x",
        "--image-opts",
        "--add",
        "driver=qcow2,file.filename=DIR/a.qcow2",
        "o",
      ], dir),
      ok,
    );
  });
});
