import type { Node } from "@blockgraph/core";
import { assert, assertEquals } from "../../conformance/mod.ts";
import { COMPAT_LAZY_REFCOUNTS, Incompat } from "./format.ts";
import { parseHeader } from "./header.ts";
import { q, qcow2Params, readAll, rejects, withImage } from "./test_fixtures.ts";

const MIB = 1 << 20;
const CS = 65536;

/** The header of the image in `mem`, as it is on disk. */
async function diskHeader(mem: Node) {
  return parseHeader(await readAll(mem, 0, 4096));
}

/** Records the discards `node` is asked for (before its own discard mode drops them). */
function spyDiscards(node: Node): [number, number][] {
  const calls: [number, number][] = [];
  const orig = node.pdiscard.bind(node);
  node.pdiscard = (offset: number, bytes: number) => {
    calls.push([offset, bytes]);
    return orig(offset, bytes);
  };
  return calls;
}

Deno.test("qcow2 cache-size splits between the L2 and refcount caches as QEMU's", () =>
  // 64 MiB of disk: one L2 table covers it (QEMU's max_l2_cache is one cluster).
  withImage(qcow2Params({ size: 64 * MIB }), async ({ open }) => {
    const sizes = async (extra: Record<string, unknown>) => {
      const n = await open(extra);
      const image = q(n).image;
      const r = [image.l2.capacity, image.refcounts.capacity];
      await n.unref("t");
      return r.join();
    };
    // Enough for the whole disk and four refcount blocks: the L2 cache gets what the disk
    // needs (at least two tables), the refcount cache the rest.
    assertEquals(await sizes({ "cache-size": 20 * CS }), "2,19", "large cache-size");
    assertEquals(await sizes({ "cache-size": 6 * CS }), "2,5", "the L2 table, then refcounts");
    // Less: four refcount blocks first, then L2 tables (none here: the minimum of two).
    assertEquals(await sizes({ "cache-size": 3 * CS }), "2,4", "small cache-size");
    assertEquals(await sizes({ "cache-size": 9 * CS, "l2-cache-size": 1 * CS }), "2,8", "l2");
    assertEquals(
      await sizes({ "cache-size": 9 * CS, "refcount-cache-size": 2 * CS }),
      "7,4",
      "refcount given: L2 takes the rest",
    );
    // Only the L2 cache given: the refcount cache keeps our default, and the other way.
    // (our default refcount cache: 1 TiB of file, 512 blocks of 64 KiB clusters).
    assertEquals(await sizes({ "l2-cache-size": 5 * CS }), "2,512", "l2 alone, clamped to disk");
    assertEquals(await sizes({ "refcount-cache-size": 10 * CS }), "2,10", "refcount alone");
    // Whole tables within the size given, whatever the entry size.
    assertEquals(
      await sizes({ "cache-size": 9 * CS + 1000, "refcount-cache-size": 2 * CS }),
      "7,4",
      "rounded down to whole tables",
    );
  }));

Deno.test("qcow2 l2-cache-entry-size is checked as QEMU's; the cache holds whole tables within the size", () =>
  withImage(qcow2Params({ size: 2 ** 40 }), async ({ open }) => {
    for (const size of [256, 1000, 2 * CS, 0]) {
      await rejects(
        open({ "l2-cache-entry-size": size }),
        "EINVAL",
        "L2 cache entry size must be a power of two between 512 and the cluster size (65536)",
      );
    }
    const n = await open({ "l2-cache-entry-size": 4096, "l2-cache-size": 8 * CS });
    assertEquals(q(n).image.l2.capacity, 8, "eight tables: the 512 KiB given");
    await n.unref("t");
  }));

Deno.test("qcow2 cache size errors are QEMU's, in QEMU's order", () =>
  withImage(qcow2Params(), async ({ open }) => {
    const cases: [Record<string, unknown>, string][] = [
      [
        { "cache-size": MIB, "l2-cache-size": CS, "refcount-cache-size": CS },
        "cache-size, l2-cache-size and refcount-cache-size may not be set at the same time",
      ],
      [{ "cache-size": CS, "l2-cache-size": 2 * CS }, "l2-cache-size may not exceed cache-size"],
      [
        { "cache-size": CS, "refcount-cache-size": 2 * CS },
        "refcount-cache-size may not exceed cache-size",
      ],
      // Before the entry size: the sizes are checked first.
      [
        { "cache-size": CS, "l2-cache-size": 2 * CS, "l2-cache-entry-size": 3 },
        "l2-cache-size may not exceed cache-size",
      ],
      [{ "cache-size": 2 ** 60, "refcount-cache-size": 0 }, "L2 cache size too big"],
      [{ "refcount-cache-size": 2 ** 50 }, "Refcount cache size too big"],
      [{ "cache-clean-interval": -1 }, "Cache clean interval too big"],
      [{ "cache-clean-interval": 2 ** 32 }, "Cache clean interval too big"],
    ];
    for (const [options, message] of cases) await rejects(open(options), "EINVAL", message);
  }));

Deno.test("qcow2 lazy-refcounts=on over an image without the bit defers refcounts behind the dirty bit until a clean close", () =>
  withImage(qcow2Params(), async ({ mem, open }) => {
    const n = await open({ "lazy-refcounts": true });
    await n.write(0, new Uint8Array(CS).fill(1));
    await n.flush();
    let h = await diskHeader(mem);
    assert((h.incompatible & BigInt(Incompat.DIRTY)) !== 0n, "dirty while open");
    assertEquals(h.compatible & BigInt(COMPAT_LAZY_REFCOUNTS), 0n, "header bit untouched");
    await n.unref("t");
    h = await diskHeader(mem);
    assertEquals(h.incompatible & BigInt(Incompat.DIRTY), 0n, "clean after close");
    const again = await open();
    const r = await q(again).check("none");
    assertEquals([r.corruptions, r.leaks].join(), "0,0", "refcounts right");
    await again.unref("t");
  }));

Deno.test("qcow2 lazy-refcounts=off over an image with the bit writes refcounts as it goes", () =>
  withImage(qcow2Params({ lazyRefcounts: true }), async ({ mem, open }) => {
    const n = await open({ "lazy-refcounts": false });
    await n.write(0, new Uint8Array(CS).fill(1));
    await n.flush();
    const h = await diskHeader(mem);
    assertEquals(h.incompatible & BigInt(Incompat.DIRTY), 0n, "never dirty");
    await n.unref("t");
  }));

Deno.test("qcow2 lazy-refcounts=on is refused on a version 2 image, read-only too", () =>
  withImage(qcow2Params({ version: 2 }), async ({ open }) => {
    const msg = "Lazy refcounts require a qcow2 image with at least qemu 1.1 compatibility level";
    await rejects(open({ "lazy-refcounts": true }), "EINVAL", msg);
    await rejects(open({ "lazy-refcounts": true, "read-only": true }), "EINVAL", msg);
    const n = await open({ "lazy-refcounts": false });
    await n.unref("t");
  }));

Deno.test("qcow2 overlap-check picks the structures checked: templates, per-structure switches, none", () =>
  withImage(qcow2Params(), async ({ open }) => {
    // Check a data write over the header, the active L1 table and an active L2 table.
    const hits = async (extra: Record<string, unknown>) => {
      const n = await open(extra);
      await n.write(0, new Uint8Array(512).fill(1));
      const image = q(n).image;
      const l2 = image.l1[0]!;
      const r = [0, image.header.l1TableOffset, l2].map((off) =>
        image.map.check("data", off, 512) ?? "-"
      );
      await n.unref("t");
      return r.join(",");
    };
    const all = "qcow2_header,active L1 table,active L2 table";
    assertEquals(await hits({}), all, "default: cached");
    assertEquals(await hits({ "overlap-check": "all" }), all, "all");
    assertEquals(await hits({ "overlap-check": "none" }), "-,-,-", "none");
    assertEquals(
      await hits({ "overlap-check": "constant" }),
      "qcow2_header,active L1 table,-",
      "constant: no L2 tables",
    );
    assertEquals(
      await hits({ "overlap-check": { template: "none", "active-l2": true } }),
      "-,-,active L2 table",
      "nested: a switch over the template",
    );
    assertEquals(
      await hits({ "overlap-check.template": "cached", "overlap-check.main-header": false }),
      "-,active L1 table,active L2 table",
      "dotted keys",
    );
    assertEquals(
      await hits({ "overlap-check": "constant", "overlap-check.template": "constant" }),
      "qcow2_header,active L1 table,-",
      "both forms, agreeing",
    );
  }));

Deno.test("qcow2 overlap-check refuses unknown and conflicting templates in QEMU's words", () =>
  withImage(qcow2Params(), async ({ open }) => {
    const unsupported = (v: string) =>
      `Unsupported value '${v}' for qcow2 option 'overlap-check'. Allowed are any of the ` +
      "following: none, constant, cached, all";
    await rejects(open({ "overlap-check": "blubb" }), "EINVAL", unsupported("blubb"));
    await rejects(open({ "overlap-check": { template: "x" } }), "EINVAL", unsupported("x"));
    await rejects(
      open({ "overlap-check": "constant", "overlap-check.template": "all" }),
      "EINVAL",
      "Conflicting values for qcow2 options 'overlap-check' ('constant') and " +
        "'overlap-check.template' ('all')",
    );
  }));

Deno.test("qcow2 pass-discard-request follows discard=unmap and decides whether guest discards reach the file", () =>
  withImage(qcow2Params(), async ({ mem, open }) => {
    const calls = spyDiscards(mem);
    const discarded = async (extra: Record<string, unknown>) => {
      const n = await open({ discard: "unmap", ...extra });
      await n.write(0, new Uint8Array(2 * CS).fill(1));
      calls.length = 0;
      await n.pdiscard(0, 2 * CS);
      await n.flush();
      const r = calls.length;
      await n.unref("t");
      return r;
    };
    assert((await discarded({})) > 0, "default with discard=unmap: passed");
    assertEquals(await discarded({ "pass-discard-request": false }), 0, "off");
  }));

Deno.test("qcow2 pass-discard-snapshot (on by default) discards a deleted snapshot's clusters", () =>
  withImage(qcow2Params(), async ({ mem, open }) => {
    const calls = spyDiscards(mem);
    const discarded = async (extra: Record<string, unknown>) => {
      const n = await open(extra);
      await n.write(0, new Uint8Array(2 * CS).fill(1));
      await q(n).snapshotCreate("s1");
      // Overwritten: the snapshot alone holds the old clusters.
      await n.write(0, new Uint8Array(2 * CS).fill(2));
      calls.length = 0;
      await q(n).snapshotDelete("s1");
      const bytes = calls.reduce((sum, c) => sum + c[1], 0);
      await n.unref("t");
      return bytes;
    };
    // The two data clusters, the snapshot's L2 table and its L1 table and the old table.
    assert((await discarded({})) >= 4 * CS, "default: the snapshot's clusters discarded");
    assertEquals(await discarded({ "pass-discard-snapshot": false }), 0, "off");
  }));

/**
 * Whether the old refcount table, replaced when 9 MiB of writes outgrow it, is discarded in
 * the file (512-byte clusters: a one-cluster table covers 8 MiB of file).
 */
async function oldTableDiscards(extra: Record<string, unknown>): Promise<number> {
  let r = -1;
  await withImage(qcow2Params({ clusterSize: 512, size: 16 * MIB }), async ({ mem, open }) => {
    const calls = spyDiscards(mem);
    const n = await open(extra);
    const old = q(n).image.refcounts.place.offset;
    await n.write(0, new Uint8Array(9 * MIB).fill(1));
    await n.flush();
    assert(q(n).image.refcounts.place.offset !== old, "the refcount table moved");
    r = calls.filter(([o, b]) => o <= old && old < o + b).length;
    await n.unref("t");
  });
  return r;
}

Deno.test("qcow2 pass-discard-other (off by default) discards the refcount table a growth replaced", async () => {
  assertEquals(await oldTableDiscards({}), 0, "default: kept");
  assertEquals(await oldTableDiscards({ "pass-discard-other": true }), 1, "on: discarded");
});

Deno.test("qcow2 cache cleaning drops the clean tables not used since the previous tick", () =>
  withImage(qcow2Params({ size: 1 << 30 }), async ({ open }) => {
    const n = await open({ "cache-clean-interval": 0 });
    const image = q(n).image;
    assertEquals(image.cleaner.interval, 0, "no timer");
    // Three L2 tables (512 MiB each), one of them dirty at the end.
    for (const at of [0, 512 * MIB, 1024 * MIB - CS]) await n.write(at, new Uint8Array(512));
    await n.flush();
    assertEquals(image.l2.size, 2, "two tables cover 1 GiB");
    await image.cleaner.clean();
    assertEquals(image.l2.size, 2, "the first tick keeps what was used since open");
    await readAll(n, 0, 512);
    await image.cleaner.clean();
    assertEquals(image.l2.size, 1, "the second drops the table unused since the first");
    await n.write(0, new Uint8Array(512).fill(3));
    await n.write(5 * CS, new Uint8Array(512).fill(3));
    assert(image.l2.dirty, "a table waits to be written");
    await image.cleaner.clean();
    await image.cleaner.clean();
    assertEquals(image.l2.size, 1, "a dirty table stays");
    await n.flush();
    await image.cleaner.clean();
    assertEquals(image.l2.size, 0, "clean and unused: dropped");
    assertEquals(image.refcounts.cachedBlocks, 0, "refcount blocks too");
    assertEquals((await readAll(n, 0, 1)).join(), "3", "reloaded on use");
    await n.unref("t");
  }));

Deno.test("qcow2 runtime options change in a reopen; left out, they return to their defaults", () =>
  withImage(qcow2Params({ size: 64 * MIB }), async ({ graph, mem, open }) => {
    const n = await open({ "lazy-refcounts": true, "cache-clean-interval": 5 });
    const image = q(n).image;
    assertEquals(image.cleaner.interval, 5, "interval at open");
    await n.write(0, new Uint8Array(CS).fill(1));
    await n.flush();
    assert(((await diskHeader(mem)).incompatible & BigInt(Incompat.DIRTY)) !== 0n, "dirty");
    const base = { driver: "qcow2", "node-name": n.name, file: "mem" };
    await rejects(
      graph.reopen(n, { ...base, "cache-size": CS, "l2-cache-size": 2 * CS }),
      "EINVAL",
      "l2-cache-size may not exceed cache-size",
    );
    assertEquals(image.cleaner.interval, 5, "a failed reopen changes nothing");
    await graph.reopen(n, {
      ...base,
      "refcount-cache-size": 9 * CS,
      "overlap-check": "none",
      "cache-clean-interval": 0,
    });
    assertEquals(image.refcounts.capacity, 9, "refcount cache resized");
    assertEquals(image.map.check("data", 0, 512), null, "overlap checks off");
    assertEquals(image.cleaner.interval, 0, "timer stopped");
    // lazy-refcounts left out: the header's (off), so the reopen marked the image clean.
    assertEquals((await diskHeader(mem)).incompatible & BigInt(Incompat.DIRTY), 0n, "clean");
    assertEquals(image.lazy, false, "refcounts written as they go");
    await graph.reopen(n, base);
    assertEquals(image.map.check("data", 0, 512), "qcow2_header", "default checks again");
    assertEquals(image.cleaner.interval, 600, "default interval");
    await n.unref("t");
  }));
