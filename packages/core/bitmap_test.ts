import { deepStrictEqual as assertEquals, ok as assert, throws } from "node:assert";
import { type BitmapArea, HBitmap } from "./bitmap.ts";

/** The obvious model: one boolean per chunk. */
class Model {
  bits: boolean[];
  constructor(public size: number, public g: number) {
    this.bits = new Array(Math.ceil(size / g)).fill(false);
  }
  set(o: number, n: number): void {
    if (n === 0) return;
    for (let b = Math.floor(o / this.g); b <= Math.floor((o + n - 1) / this.g); b++) {
      this.bits[b] = true;
    }
  }
  reset(o: number, n: number): void {
    for (let b = o / this.g; b < Math.ceil((o + n) / this.g); b++) this.bits[b] = false;
  }
  count(): number {
    return this.bits.filter((x) => x).length * this.g;
  }
  next(o: number, n: number, v: boolean): number {
    const end = Math.min(this.size, o + n);
    for (let p = o; p < end; p++) if (this.bits[Math.floor(p / this.g)] === v) return p;
    return -1;
  }
  areas(): BitmapArea[] {
    const out: BitmapArea[] = [];
    for (let b = 0; b < this.bits.length; b++) {
      if (!this.bits[b]) continue;
      const start = b;
      while (b < this.bits.length && this.bits[b]) b++;
      out.push({ offset: start * this.g, bytes: Math.min(this.size, b * this.g) - start * this.g });
    }
    return out;
  }
}

/** A small deterministic PRNG, so failures reproduce. */
function rng(seed: number): (n: number) => number {
  let s = seed >>> 0;
  return (n) => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return Math.floor((s / 2 ** 32) * n);
  };
}

function check(hb: HBitmap, m: Model, r: (n: number) => number): void {
  assertEquals(hb.count, m.count());
  for (let i = 0; i < 8; i++) {
    const o = r(m.size);
    const n = r(m.size - o + 1);
    assertEquals(hb.nextDirty(o, n), m.next(o, n, true), `nextDirty(${o}, ${n})`);
    assertEquals(hb.nextZero(o, n), m.next(o, n, false), `nextZero(${o}, ${n})`);
    assertEquals(hb.get(o), m.bits[Math.floor(o / m.g)]);
  }
  assertEquals([...hb.areas()], m.areas());
}

const SHAPES: [number, number][] = [[1, 1], [5000, 1], [70_001, 512], [200_000, 64], [
  3 << 20,
  4096,
]];
for (const [size, g] of SHAPES) {
  Deno.test(`HBitmap matches a naive model under random set/reset (size ${size}, g ${g})`, () => {
    const r = rng(size ^ g);
    const hb = new HBitmap(size, g);
    const m = new Model(size, g);
    for (let i = 0; i < 400; i++) {
      const op = r(10);
      const o = r(size);
      const n = r(Math.min(size - o, op < 2 ? size : 40 * g) + 1);
      if (op < 6) {
        hb.set(o, n);
        m.set(o, n);
      } else if (op < 9) {
        const ao = o - (o % g);
        let an = n - (n % g);
        if (r(4) === 0) an = size - ao;
        hb.reset(ao, an);
        m.reset(ao, an);
      } else if (r(8) === 0) {
        hb.resetAll();
        m.reset(0, size);
      }
      if (i % 20 === 0) check(hb, m, r);
    }
    check(hb, m, r);
  });
}

Deno.test("HBitmap.count rounds partial chunks up, as QEMU's", () => {
  const hb = new HBitmap(1000, 512);
  hb.set(999, 1);
  assertEquals(hb.count, 512);
  hb.set(0, 1);
  assertEquals(hb.count, 1024);
  assertEquals(hb.dirtyBits, 2);
  hb.reset(512, 488);
  assertEquals(hb.count, 512);
  throws(() => hb.reset(100, 512), /not aligned/);
  throws(() => hb.set(900, 101), /out of range/);
});

Deno.test("HBitmap.nextDirtyArea clips to the range and to maxBytes", () => {
  const hb = new HBitmap(1 << 20, 4096);
  hb.set(8192, 3 * 4096);
  hb.set(65536, 1);
  assertEquals(hb.nextDirtyArea(0), { offset: 8192, bytes: 12288 });
  assertEquals(hb.nextDirtyArea(10000), { offset: 10000, bytes: 10480 });
  assertEquals(hb.nextDirtyArea(0, Infinity, 4096), { offset: 8192, bytes: 4096 });
  assertEquals(hb.nextDirtyArea(0, 9000), { offset: 8192, bytes: 808 });
  assertEquals(hb.nextDirtyArea(20480), { offset: 65536, bytes: 4096 });
  assertEquals(hb.nextDirtyArea(69632), null);
});

Deno.test("HBitmap.merge ORs bitmaps of equal and of different granularity", () => {
  const a = new HBitmap(1 << 22, 512);
  const b = new HBitmap(1 << 22, 512);
  a.set(0, 512);
  b.set(0, 1024);
  b.set(3 << 20, 100);
  a.merge(b);
  assertEquals([...a.areas()], [{ offset: 0, bytes: 1024 }, { offset: 3 << 20, bytes: 512 }]);
  assertEquals(a.count, 1536);
  const coarse = new HBitmap(1 << 22, 65536);
  coarse.merge(a);
  assertEquals([...coarse.areas()], [{ offset: 0, bytes: 65536 }, {
    offset: 3 << 20,
    bytes: 65536,
  }]);
  const fine = new HBitmap(1 << 22, 512);
  fine.merge(coarse);
  assertEquals(fine.count, 2 * 65536);
  assert(!a.canMerge(new HBitmap(1 << 21, 512)));
  throws(() => a.merge(new HBitmap(1 << 21, 512)), /Cannot merge/);
});

Deno.test("HBitmap.serialize and deserialize round-trip in qcow2 bit order", () => {
  const hb = new HBitmap(100 * 512 + 7, 512);
  hb.set(0, 1);
  hb.set(9 * 512, 512);
  hb.set(100 * 512, 1);
  const all = hb.serialize(0, hb.size);
  assertEquals(all.length, 13);
  assertEquals([all[0], all[1], all[12]], [0x01, 0x02, 0x10]);
  const tail = hb.serialize(64 * 512, hb.size - 64 * 512);
  assertEquals(tail.length, 5);
  throws(() => hb.serialize(512, 512), /not aligned/);
  const back = new HBitmap(hb.size, 512);
  back.set(50 * 512, 1);
  back.deserialize(all, 0, hb.size);
  assertEquals([...back.areas()], [...hb.areas()]);
  assertEquals(back.count, hb.count);
  // Bits past the end are ignored; zeros clear.
  back.deserialize(new Uint8Array(13).fill(0xff), 0, hb.size);
  assertEquals(back.count, 101 * 512);
  back.deserialize(new Uint8Array(13), 0, hb.size);
  assert(back.isEmpty);
  assertEquals(back.nextDirty(0), -1);
});

Deno.test("HBitmap.truncate grows clean and shrinks away the tail", () => {
  const hb = new HBitmap(10_000, 512);
  hb.set(0, 10_000);
  assertEquals(hb.count, 20 * 512);
  hb.truncate(5000);
  assertEquals(hb.count, 10 * 512);
  assertEquals(hb.nextDirty(4000), 4000);
  hb.truncate(1 << 20);
  assertEquals(hb.count, 10 * 512);
  assertEquals(hb.nextDirty(5120), -1);
  assertEquals(hb.nextZero(0), 5120);
  hb.set((1 << 20) - 1, 1);
  assertEquals(hb.nextDirty(5120), (1 << 20) - 512);
  hb.truncate(0);
  assertEquals(hb.count, 0);
  assertEquals(hb.nextDirty(0), -1);
});

Deno.test("HBitmap of 1 TiB at 64 KiB is quick to create and to use", () => {
  const t0 = performance.now();
  const hb = new HBitmap(2 ** 40, 65536);
  const created = performance.now() - t0;
  assert(created < 200, `creating took ${created} ms`);
  const t1 = performance.now();
  for (let i = 0; i < 100_000; i++) hb.set(((i * 7919) % 2 ** 24) * 65536, 4096);
  assertEquals(hb.nextDirty(0), 0);
  assert(hb.nextDirty(2 ** 40 - 2 ** 30) > 0);
  hb.set(2 ** 40 - 1, 1);
  assertEquals(hb.nextDirty(2 ** 40 - 2 ** 20 + 1), 2 ** 40 - 65536);
  const used = performance.now() - t1;
  assert(used < 500, `100k sets took ${used} ms`);
  throws(() => new HBitmap(2 ** 50, 512), /more than 2\^31 bits/);
  throws(() => new HBitmap(1024, 768), /power of two/);
});
