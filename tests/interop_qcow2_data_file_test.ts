/**
 * qcow2 external data files against qemu-img and qemu-io 7.2, with data_file_raw on and off,
 * both ways: images qemu writes read the same in blockgraph (contents, map, info, check), and
 * images blockgraph creates and writes pass `qemu-img check` with `qemu-img compare` agreeing,
 * a raw data file being the guest's disk itself.
 *
 * @module
 */

import { deepStrictEqual as assertEquals } from "node:assert";
import { mustOurIo, runOurImg } from "./cli_run.ts";
import { cmds, expect, must, run, withDir } from "./interop_qcow2_helpers.ts";
import { qemuCreateQcow2 } from "./peer_run.ts";

const WORKLOAD = [
  "write -P 1 0 1k",
  "write -P 2 70k 10k",
  "write -z 192k 64k",
  "write -P 3 1000k 100k",
  "discard 512k 64k",
  "write -P 4 600k 4k",
  "aio_write -P 5 1300k 2k",
  "aio_write -P 6 1310k 2k",
  "aio_flush",
];

Deno.test("qemu-img data-file images read, map and show the same in blockgraph", () =>
  withDir(async (dir) => {
    for (const raw of ["off", "on"]) {
      for (const extl2 of ["off", "on"]) {
        const path = `${dir}/q.qcow2`;
        // Absolute names: qemu-img 7.2 takes a relative one from its working directory.
        const opts = `data_file=${dir}/q.raw,data_file_raw=${raw},extended_l2=${extl2}`;
        await qemuCreateQcow2(path, "2M", opts);
        await must("qemu-io", cmds(WORKLOAD).concat(path));
        const out = `${dir}/flat.raw`;
        const conv = await runOurImg(["convert", "-O", "raw", path, out]);
        expect(conv.code === 0, conv.err);
        const cmp = await run("qemu-img", ["compare", "-F", "raw", path, out]);
        expect(cmp.code === 0, `${opts}: contents:\n${cmp.out}`);
        for (const args of [["map", "--output=json"], ["info"], ["info", "--output=json"]]) {
          const mine = await runOurImg([...args, path]);
          assertEquals(mine.out, await must("qemu-img", [...args, path]), `${opts}: ${args}`);
        }
        const check = await runOurImg(["check", path]);
        assertEquals(check.out, await must("qemu-img", ["check", path]), `${opts}: check`);
        for (const p of [path, out, `${dir}/q.raw`]) await Deno.remove(p);
      }
    }
  }));

Deno.test("blockgraph-written data-file images pass qemu-img check and compare", () =>
  withDir(async (dir) => {
    for (const raw of ["off", "on"]) {
      for (const extl2 of ["off", "on"]) {
        const theirs = `${dir}/q.qcow2`;
        const mine = `${dir}/b.qcow2`;
        const opts = (f: string) =>
          `data_file=${dir}/${f},data_file_raw=${raw},extended_l2=${extl2}`;
        await qemuCreateQcow2(theirs, "2M", opts("q.raw"));
        const made = await runOurImg([
          "create",
          "-q",
          "-f",
          "qcow2",
          "-o",
          opts("b.raw"),
          mine,
          "2M",
        ]);
        expect(made.code === 0, made.err);
        await must("qemu-io", cmds(WORKLOAD).concat(theirs));
        await mustOurIo(cmds(WORKLOAD).concat(mine));
        const label = `raw=${raw} extended_l2=${extl2}`;
        const check = await run("qemu-img", ["check", mine]);
        expect(check.code === 0, `${label}: qemu-img check:\n${check.out}`);
        const cmp = await run("qemu-img", ["compare", theirs, mine]);
        expect(cmp.code === 0, `${label}: qemu-img compare:\n${cmp.out}`);
        if (raw === "on") {
          // The raw data file is the disk: qemu-img reads it as raw and finds the same.
          const flat = await run("qemu-img", ["compare", "-f", "raw", `${dir}/b.raw`, mine]);
          expect(flat.code === 0, `${label}: raw data file:\n${flat.out}`);
        }
        for (const p of [theirs, mine, `${dir}/q.raw`, `${dir}/b.raw`]) await Deno.remove(p);
      }
    }
  }));

Deno.test("img create and amend with data files answer as qemu-img does", () =>
  withDir(async (dir) => {
    const base = `${dir}/base.qcow2`;
    await must("qemu-img", ["create", "-q", "-f", "qcow2", base, "1M"]);
    const d = `data_file=${dir}/d.raw`;
    const cases = [
      ["-o", `${d},compat=0.10`],
      ["-o", "data_file_raw=on"],
      ["-o", `${d},data_file_raw=on`, "-b", "base.qcow2", "-F", "qcow2"],
      ["-o", `${d},preallocation=falloc`],
      ["-o", `${d},data_file_raw=on,extended_l2=on`],
    ];
    const path = `${dir}/t.qcow2`;
    const state = async () => {
      const info = await run("qemu-img", ["info", "--output=json", path]);
      const size = await Deno.stat(`${dir}/d.raw`).then((s) => s.size, () => -1);
      return info.out.replace(/"actual-size": \d+,/, "") + `data file size ${size}`;
    };
    const clear = async () => {
      for (const p of [path, `${dir}/d.raw`]) await Deno.remove(p).catch(() => {});
    };
    for (const c of cases) {
      await clear();
      const theirs = await run("qemu-img", ["create", "-q", "-f", "qcow2", ...c, path, "1M"]);
      const theirState = await state();
      await clear();
      const mine = await runOurImg(["create", "-q", "-f", "qcow2", ...c, path, "1M"]);
      assertEquals(mine.err, theirs.out.replace(/^\S*qemu-img: /, "qemu-img: "), c.join(" "));
      assertEquals(await state(), theirState, `${c.join(" ")}: result`);
    }
    for (const o of ["data_file_raw=on", "data_file=e.raw", "compat=0.10"]) {
      await clear();
      await qemuCreateQcow2(path, "1M", d);
      const theirs = await run("qemu-img", ["amend", "-o", o, path]);
      const theirState = await state();
      await clear();
      await qemuCreateQcow2(path, "1M", d);
      const mine = await runOurImg(["amend", "-o", o, path]);
      assertEquals([mine.code, mine.err], [theirs.code, theirs.out], `amend ${o}`);
      assertEquals(await state(), theirState, `amend ${o}: result`);
    }
  }));

Deno.test("img resize and commit with data files and extended L2 do what qemu-img does", () =>
  withDir(async (dir) => {
    const top = `${dir}/top.qcow2`;
    const data = `${dir}/td.raw`;
    // Resize: the data file follows the size; a raw one is mapped 1:1 after growth.
    for (const raw of ["on", "off"]) {
      const state = async () =>
        (await must("qemu-img", ["map", "--output=json", top])) + (await Deno.stat(data)).size;
      const results: string[] = [];
      for (const ours of [false, true]) {
        for (const p of [top, data]) await Deno.remove(p).catch(() => {});
        const o = `data_file=${data},data_file_raw=${raw}`;
        await qemuCreateQcow2(top, "1M", o);
        const resize = (args: string[]) =>
          ours ? runOurImg(["resize", ...args]) : must("qemu-img", ["resize", ...args]);
        await resize([top, "2M"]);
        let s = await state();
        await resize(["--shrink", top, "512k"]);
        s += await state();
        const check = await run("qemu-img", ["check", top]);
        expect(check.code === 0, `raw=${raw}: check after resize:\n${check.out}`);
        results.push(s);
      }
      assertEquals(results[1], results[0], `resize raw=${raw}`);
    }
    // Commit of an extended-L2 top with a data file into an extended-L2 base.
    const base = `${dir}/base.qcow2`;
    const flat: Uint8Array[] = [];
    for (const ours of [false, true]) {
      for (const p of [top, data, base]) await Deno.remove(p).catch(() => {});
      await qemuCreateQcow2(base, "1M", "extended_l2=on");
      await must("qemu-io", cmds(["write -P 1 0 1M", "write -z 100k 3k"]).concat(base));
      await must("qemu-img", [
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        `extended_l2=on,data_file=${data}`,
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
        top,
      ]);
      await must(
        "qemu-io",
        cmds(["write -P 2 5k 2k", "write -P 3 300k 70k", "write -z 600k 4k"]).concat(top),
      );
      if (ours) {
        const r = await runOurImg(["commit", top]);
        expect(r.code === 0, r.err);
      } else await must("qemu-img", ["commit", top]);
      for (const p of [top, base]) {
        const check = await run("qemu-img", ["check", p]);
        expect(check.code === 0, `commit: check ${p}:\n${check.out}`);
      }
      await must("qemu-img", ["convert", "-O", "raw", base, `${dir}/flat.raw`]);
      flat.push(await Deno.readFile(`${dir}/flat.raw`));
    }
    expect(flat[0]!.every((b, i) => b === flat[1]![i]), "committed contents differ");
  }));
