import { deepStrictEqual as assertEquals } from "node:assert";
import type { Qcow2CheckResult } from "@blockgraph/drivers";
import { captureIo } from "../common/cli_io.ts";
import { qdictJson } from "../common/qdict_json.ts";
import { reportCheck } from "./check.ts";
import { compareBuffers, findNonzero } from "./compare.ts";
import { qcow2FullSize } from "./measure.ts";
import { Progress } from "./progress.ts";
import { runImg } from "./run_img.ts";

async function img(args: string[]) {
  const cap = captureIo();
  const status = await runImg(args, cap);
  return { status, out: cap.stdout, err: cap.stderr };
}

function result(over: Partial<Qcow2CheckResult>): Qcow2CheckResult {
  return {
    corruptions: 0,
    leaks: 0,
    "check-errors": 0,
    "corruptions-fixed": 0,
    "leaks-fixed": 0,
    "image-end-offset": 262144,
    "total-clusters": 16,
    "allocated-clusters": 2,
    "fragmented-clusters": 1,
    "compressed-clusters": 0,
    messages: [],
    ...over,
  };
}

Deno.test("qdictJson prints QDicts in QEMU's key order and quoting", () => {
  assertEquals(qdictJson({ data: 1, type: "x" }), '{\n    "type": "x",\n    "data": 1\n}\n');
  assertEquals(qdictJson({ filename: "\u00e9.raw" }), '{\n    "filename": "\\u00E9.raw"\n}\n');
});

Deno.test("reportCheck prints qemu-img's summaries and exit codes", () => {
  const io = captureIo();
  assertEquals(reportCheck(io, result({ leaks: 3 }), "human", false, "a", "qcow2"), 3);
  assertEquals(
    io.stdout,
    "\n3 leaked clusters were found on the image.\n" +
      "This means waste of disk space, but no harm to data.\n" +
      "2/16 = 12.50% allocated, 50.00% fragmented, 0.00% compressed clusters\n" +
      "Image end offset: 262144\n",
  );
  const messages = [
    "Leaked cluster 5 refcount=1 reference=0",
    "The following inconsistencies were found and repaired:",
    "",
    "    1 leaked clusters",
    "    0 corruptions",
    "",
    "Double checking the fixed image now...",
  ];
  const fixed = captureIo();
  const r = result({ "leaks-fixed": 1, messages });
  assertEquals(reportCheck(fixed, r, "human", false, "a", "qcow2"), 0);
  assertEquals(fixed.stderr, "Leaked cluster 5 refcount=1 reference=0\n");
  assertEquals(fixed.stdout.split("\n").slice(0, 2), [messages[1], ""]);
  const bad = captureIo();
  assertEquals(reportCheck(bad, result({ corruptions: 2 }), "json", false, "a", "qcow2"), 2);
  assertEquals(JSON.parse(bad.stdout).corruptions, 2);
  const failed = captureIo();
  assertEquals(reportCheck(failed, result({ "check-errors": 1 }), "human", true, "a", "q"), 1);
  assertEquals(failed.stderr, "qemu-img: Check failed\n");
});

Deno.test("compareBuffers and findNonzero answer in whole sectors as qemu-img", () => {
  const a = new Uint8Array(2048);
  const b = new Uint8Array(2048);
  b[1500] = 1;
  assertEquals(compareBuffers(a, b), { differ: false, pnum: 1024 });
  assertEquals(findNonzero(b), 1024);
  assertEquals(findNonzero(a), -1);
});

Deno.test("qcow2FullSize matches qemu-img measure for 1 GiB", () => {
  assertEquals(qcow2FullSize(1 << 30, 65536, 4), 1074135040);
});

Deno.test("Progress draws qemu-img's line on any output, and reports on SIGUSR1 without -p", async () => {
  for (const tty of [true, false]) {
    const io = captureIo([], tty);
    const p = new Progress(io, true, 1);
    p.print(0, 100);
    p.print(50, 100);
    p.print(0.5, 100);
    p.print(49.5, 100);
    p.print(10, 100);
    p.end();
    assertEquals(
      io.stdout,
      "    (0.00/100%)\r    (50.00/100%)\r    (100.00/100%)\r    (100.00/100%)\r\n",
      `stdout a terminal: ${tty}`,
    );
  }
  const quiet = captureIo();
  const q = new Progress(quiet, false, 1);
  q.print(10, 100);
  Deno.kill(Deno.pid, "SIGUSR1");
  // The signal arrives through the event loop.
  for (let i = 0; i < 100 && quiet.stderr === ""; i++) {
    await new Promise((r) => setTimeout(r, 5));
    q.print(2, 100);
  }
  q.print(50, 100);
  q.end();
  assertEquals(quiet.stdout, "");
  assertEquals(/^ {4}\(\d+\.\d\d\/100%\)\n$/.test(quiet.stderr), true, quiet.stderr);
});

Deno.test("img convert, map and compare work on in-memory-sized raw images", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const src = `${dir}/a.raw`;
    const data = new Uint8Array(256 << 10);
    data.fill(7, 64 << 10, 80 << 10);
    await Deno.writeFile(src, data);
    assertEquals(await img(["convert", "-O", "qcow2", src, `${dir}/b.qcow2`]), {
      status: 0,
      out: "",
      err: "",
    });
    const map = await img(["map", "--output=json", `${dir}/b.qcow2`]);
    const entries = JSON.parse(map.out) as { start: number; length: number; data: boolean }[];
    assertEquals(entries.filter((e) => e.data).map((e) => [e.start, e.length]), [[
      65536,
      65536,
    ]]);
    assertEquals((await img(["compare", src, `${dir}/b.qcow2`])).out, "Images are identical.\n");
    await img(["convert", "-O", "raw", `${dir}/b.qcow2`, `${dir}/c.raw`]);
    assertEquals(await Deno.readFile(`${dir}/c.raw`), data);
    const other = data.slice();
    other[100000] = 1;
    await Deno.writeFile(`${dir}/d.raw`, other);
    assertEquals(await img(["compare", "-f", "raw", "-F", "raw", src, `${dir}/d.raw`]), {
      status: 1,
      out: "Content mismatch at offset 99840!\n",
      err: "",
    });
    assertEquals((await img(["check", "-f", "raw", src])).status, 63);
    assertEquals(await img(["resize", "-f", "raw", src, "+64k"]), {
      status: 0,
      out: "Image resized.\n",
      err: "",
    });
    assertEquals((await Deno.stat(src)).size, 320 << 10);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("img info shows dirty-flag only where QEMU's bdrv_get_info answers", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const raw = `${dir}/r.raw`;
    await Deno.writeFile(raw, new Uint8Array(4096));
    const cases: [string[], boolean][] = [
      [[raw], true],
      [["--image-opts", "driver=null-co,size=1M"], false],
      [["--image-opts", "driver=raw,file.driver=null-co,file.size=1M"], false],
      [["--image-opts", `driver=raw,file.driver=file,file.filename=${raw}`], true],
    ];
    for (const [args, shown] of cases) {
      const r = await img(["info", "--output=json", ...args]);
      assertEquals(r.status, 0, r.err);
      assertEquals("dirty-flag" in JSON.parse(r.out), shown, args.join(" "));
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("reportCheck rounds percentages as glibc's %0.2f (ties to even)", () => {
  const io = captureIo();
  // 1 of 32 allocated clusters fragmented: 3.125% exactly, which C prints as 3.12.
  reportCheck(
    io,
    result({ "allocated-clusters": 32, "fragmented-clusters": 1, "total-clusters": 256 }),
    "human",
    false,
    "a",
    "qcow2",
  );
  assertEquals(io.stdout.includes("32/256 = 12.50% allocated, 3.12% fragmented"), true, io.stdout);
});
