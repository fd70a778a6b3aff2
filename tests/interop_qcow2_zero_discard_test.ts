/**
 * qcow2 discard and write-zeroes against qemu-io: the same requests on copies of the same
 * images (version 3 and 2, extended L2, each alone and over a backing file), then `qemu-img
 * map` (allocation, zero flags, depth), `compare` and `check` must agree. QEMU's rules: a
 * discarded cluster reads as zeros (a zero cluster on version 3 when it was allocated or a
 * backing file shows through), and a version 2 image with a backing file does not discard
 * at all; write-zeroes makes even unallocated clusters zero clusters on version 3, discards
 * on version 2 without a backing file, and writes zero buffers on version 2 with one.
 */
import { cmds, expect, must, run, withDir } from "./interop_qcow2_helpers.ts";
import { runOurIo } from "./cli_run.ts";

const KINDS: [string, string[]][] = [
  ["v3", []],
  ["v2", ["-o", "compat=0.10"]],
  ["extended L2", ["-o", "extended_l2=on"]],
];

const withoutOffsets = (map: string) => map.replace(/, "offset": \d+/g, "");

for (const [kind, opts] of KINDS) {
  Deno.test(`qcow2 discard and write-zeroes match qemu-io (${kind}, alone and over a backing file)`, async () => {
    await withDir(async (dir) => {
      const base = `${dir}/base.qcow2`;
      const top = `${dir}/top.qcow2`;
      await must("qemu-img", ["create", "-q", "-f", "qcow2", ...opts, base, "8M"]);
      await must("qemu-io", [...cmds(["write -P 1 0 1M", "write -z 2M 256k"]), base]);
      await must("qemu-img", [
        "create",
        "-q",
        "-f",
        "qcow2",
        ...opts,
        "-b",
        base,
        "-F",
        "qcow2",
        top,
      ]);
      await must("qemu-io", [...cmds(["write -P 2 512k 1M"]), top]);
      for (const image of [base, top]) {
        for (
          // Part of a cluster that holds no data and reads as zeros beside the request
          // (2052k: a zero cluster; 1540k: unallocated down the chain) becomes a zero
          // cluster whole, as QEMU's qcow2_co_pwrite_zeroes does.
          const op of ["0 64k", "0 2M", "448k 128k", "4k 8k", "2052k 8k", "1540k 4k", "0 8M"]
            .flatMap((range) => [
              `discard ${range}`,
              `write -z ${range}`,
              `write -z -u ${range}`,
            ])
        ) {
          const what = `${kind} ${image === top ? "over a backing file" : "alone"}, ${op}`;
          await sameAsQemuIo(dir, image, op, what);
        }
      }
    });
  });
}

/**
 * `op` run by qemu-io and by ours on copies of `image` (in `dir`): `qemu-img map` (but host
 * offsets), `compare` and `check` must agree.
 */
async function sameAsQemuIo(dir: string, image: string, op: string, what: string) {
  const theirs = `${dir}/q.qcow2`;
  const ours = `${dir}/o.qcow2`;
  await Deno.copyFile(image, theirs);
  await Deno.copyFile(image, ours);
  await must("qemu-io", ["-c", op, theirs]);
  const r = await runOurIo(["-c", op, ours]);
  expect(r.code === 0, `our ${op}: ${r.err}`);
  const map = (p: string) => must("qemu-img", ["map", "--output=json", p]);
  expect(
    withoutOffsets(await map(ours)) === withoutOffsets(await map(theirs)),
    `${what}: map of ours\n${await map(ours)}theirs\n${await map(theirs)}`,
  );
  expect(
    (await run("qemu-img", ["compare", "-q", ours, theirs])).code === 0,
    `${what}: compare`,
  );
  const check = async (p: string) => (await run("qemu-img", ["check", p])).out.replaceAll(p, "X");
  expect((await check(ours)) === (await check(theirs)), `${what}: check`);
}

Deno.test("qcow2 write-zeroes of part of a cluster asks whether the rest reads as zeros as QEMU's is_zero: through filters, holes of a raw base, and this layer's zero clusters", async () => {
  await withDir(async (dir) => {
    const q = (...args: string[]) => must("qemu-img", args);
    await q("create", "-q", "-f", "qcow2", `${dir}/base.qcow2`, "4M");
    await must("qemu-io", [...cmds(["write -P 0x55 0 4M"]), `${dir}/base.qcow2`]);
    await q("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", `${dir}/mid.qcow2`);
    // A raw node over mid is a filter: the base's data below it must not be taken for zeros.
    const filtered = `json:{"driver":"raw","file":{"driver":"qcow2","file":` +
      `{"driver":"file","filename":"${dir}/mid.qcow2"}}}`;
    await q("create", "-q", "-f", "qcow2", "-b", filtered, "-F", "raw", `${dir}/f.qcow2`, "4M");
    // A raw base whose holes read as zeros: block status must look for them.
    await q("create", "-q", "-f", "raw", `${dir}/sparse.raw`, "4M");
    await must("qemu-io", [...cmds(["write -P 7 0 64k"]), "-f", "raw", `${dir}/sparse.raw`]);
    await q("create", "-q", "-f", "qcow2", "-b", "sparse.raw", "-F", "raw", `${dir}/s.qcow2`);
    // A zero cluster in this layer over data: zeroing part of it again changes nothing.
    await q("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", `${dir}/z.qcow2`);
    await must("qemu-io", [...cmds(["write -z 1536k 64k"]), `${dir}/z.qcow2`]);
    for (const image of ["f.qcow2", "s.qcow2", "z.qcow2"]) {
      for (const op of ["write -z 1540k 4k", "write -z -u 1540k 4k"]) {
        await sameAsQemuIo(dir, `${dir}/${image}`, op, `${image}, ${op}`);
      }
    }
  });
});
