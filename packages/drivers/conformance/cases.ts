/**
 * The behaviours every driver shows, as conformance cases: reads and writes at odd offsets
 * and lengths, vectored and concurrent requests, write-zeroes, discard, flush, block status,
 * reads past the end, resize, read-only nodes and invalid requests, each checked against a
 * {@link DiskModel}.
 *
 * @module
 */

import { BlockStatusFlags, IoVector, type Node, ReqFlags } from "@blockgraph/core";
import {
  assert,
  assertBytesEqual,
  assertEquals,
  AssertionError,
  assertRejectsWith,
} from "./assertions.ts";
import type { CaseContext, ConformanceCapabilities, ConformanceCase } from "./target.ts";

/** The byte reads are pre-filled with, so a driver that leaves a buffer alone is caught. */
const POISON = 0xa5;
/** The largest piece the suite reads at once when it compares a whole range. */
const READ_PIECE = 1024 * 1024;

/** A pattern with no zero byte (so discarded-to-zero and kept data differ), varied by `seed`. */
export function pattern(length: number, seed: number): Uint8Array {
  const out = new Uint8Array(length);
  for (let i = 0; i < length; i++) out[i] = ((i + seed * 37) % 251) + 1;
  return out;
}

/** Reads `bytes` bytes at `offset` into a poisoned buffer. */
async function readBuf(node: Node, offset: number, bytes: number): Promise<Uint8Array> {
  const buf = new Uint8Array(bytes).fill(POISON);
  await node.read(offset, buf);
  return buf;
}

/** Reads a range and compares it with what the capabilities say it must hold. */
async function expectRead(ctx: CaseContext, offset: number, bytes: number): Promise<void> {
  for (let done = 0; done < bytes;) {
    const n = Math.min(bytes - done, READ_PIECE);
    const got = await readBuf(ctx.node, offset + done, n);
    const what = `read of ${n} bytes at ${offset + done}`;
    if (ctx.caps.persistent) {
      assertBytesEqual(got, ctx.model.read(offset + done, n), what, offset + done);
    } else if (ctx.caps.readsZeroes) {
      assertBytesEqual(got, new Uint8Array(n), what, offset + done);
    }
    done += n;
  }
}

/** Compares the whole node with the model. */
function expectWholeDisk(ctx: CaseContext): Promise<void> {
  assertEquals(ctx.node.getLength(), ctx.caps.persistent ? ctx.model.length : ctx.node.getLength());
  return expectRead(ctx, 0, ctx.node.getLength());
}

async function write(ctx: CaseContext, offset: number, data: Uint8Array): Promise<void> {
  await ctx.node.write(offset, data);
  ctx.model.write(offset, data);
}

async function writeZeroes(
  ctx: CaseContext,
  offset: number,
  bytes: number,
  flags = 0,
): Promise<void> {
  await ctx.node.pwriteZeroes(offset, bytes, flags);
  ctx.model.zero(offset, bytes);
}

/**
 * Discards a range and checks each byte reads as before or as zero, and whole granules
 * (when the driver promises them) as zero; the model then takes what was read.
 */
async function discardAndCheck(ctx: CaseContext, offset: number, bytes: number): Promise<void> {
  const { node, model, caps } = ctx;
  const before = model.read(offset, bytes);
  await node.pdiscard(offset, bytes);
  if (!caps.persistent) return;
  const after = await readBuf(node, offset, bytes);
  for (let i = 0; i < bytes; i++) {
    if (after[i] !== before[i] && after[i] !== 0) {
      throw new AssertionError(
        `discard of ${bytes} bytes at ${offset}: byte at ${offset + i} reads ${after[i]}, ` +
          `neither the old ${before[i]} nor zero`,
      );
    }
  }
  const g = caps.discardGranularity ?? 0;
  if (g > 0 && node.flags.discard === "unmap") {
    const first = Math.ceil(offset / g) * g;
    for (let s = first; s + g <= offset + bytes; s += g) {
      for (let i = s; i < s + g; i++) {
        if (after[i - offset] !== 0) {
          throw new AssertionError(
            `discard of ${bytes} bytes at ${offset}: byte at ${i} inside the whole discarded ` +
              `block at ${s} reads ${after[i - offset]}, not zero`,
          );
        }
      }
    }
  }
  model.write(offset, after);
}

/**
 * A small deterministic generator (xorshift32), so a failing sequence can be replayed: each
 * call returns an integer in `[0, limit)`.
 */
export function rng(seed: number): (limit: number) => number {
  let x = seed >>> 0 || 1;
  return (limit: number) => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x % limit;
  };
}

const ODD_OFFSETS = [1, 511, 4097, 65535];
const ODD_LENGTHS = [1, 511, 513, 4095, 65537];

/** Every conformance case, in the order they run. */
export function conformanceCases(): ConformanceCase[] {
  return [
    {
      name: "a fresh disk reads as zeros",
      applies: (caps) => caps.persistent || caps.readsZeroes === true,
      run: (ctx) => expectWholeDisk(ctx),
    },
    {
      name: "write then read at odd offsets and lengths",
      async run(ctx) {
        let seed = 1;
        for (const offset of ODD_OFFSETS) {
          for (const length of ODD_LENGTHS) {
            await write(ctx, offset, pattern(length, seed++));
            // One byte either side shows the write stayed inside its range.
            await expectRead(ctx, offset - 1, length + 2);
            await expectRead(ctx, offset + 3, Math.max(1, length - 7));
          }
        }
        await expectWholeDisk(ctx);
      },
    },
    {
      name: "vectored requests with several segments",
      async run(ctx) {
        const data = pattern(3 + 4096 + 1 + 600, 7);
        const segs = [data.slice(0, 3), data.slice(3, 4099), data.slice(4099, 4100)];
        segs.push(data.slice(4100));
        // Write from the middle of a larger vector: qiovOffset 2 skips a 2-byte head.
        const q = new IoVector([new Uint8Array([0xee, 0xee]), ...segs]);
        await ctx.node.pwritev(777, data.length, q, 2);
        ctx.model.write(777, data);
        const a = new Uint8Array(1000).fill(POISON);
        const b = new Uint8Array(3700 + 5).fill(POISON);
        await ctx.node.preadv(777, data.length, new IoVector([a, b]), 0);
        const got = new Uint8Array(data.length);
        got.set(a);
        got.set(b.subarray(0, data.length - a.length), a.length);
        if (ctx.caps.persistent) {
          assertBytesEqual(got, data, "vectored read");
          assertBytesEqual(b.subarray(b.length - 5), new Uint8Array(5).fill(POISON), "spare");
        }
        await expectRead(ctx, 770, data.length + 14);
      },
    },
    {
      name: "concurrent writes to separate ranges all land",
      async run(ctx) {
        const writes: Promise<void>[] = [];
        for (let i = 0; i < 16; i++) {
          const data = pattern(4099, 100 + i);
          writes.push(ctx.node.write(i * 5003 + 11, data));
          ctx.model.write(i * 5003 + 11, data);
        }
        await Promise.all(writes);
        const reads: Promise<void>[] = [];
        for (let i = 0; i < 16; i++) reads.push(expectRead(ctx, i * 5003, 5003));
        await Promise.all(reads);
      },
    },
    {
      name: "write-zeroes, aligned and unaligned",
      async run(ctx) {
        await write(ctx, 0, pattern(6 * 65536, 3));
        await writeZeroes(ctx, 65536, 65536);
        await writeZeroes(ctx, 4097, 1000);
        await writeZeroes(ctx, 1, 1);
        await writeZeroes(ctx, 130000, 70000, ReqFlags.MAY_UNMAP);
        await writeZeroes(ctx, 4 * 65536, 2 * 65536, ReqFlags.MAY_UNMAP);
        await expectRead(ctx, 0, 7 * 65536);
      },
    },
    {
      name: "discarded data reads back as before or as zeros",
      async run(ctx) {
        await write(ctx, 0, pattern(8 * 65536, 5));
        await discardAndCheck(ctx, 65536 + 100, 200000);
        await discardAndCheck(ctx, 3, 5);
        await discardAndCheck(ctx, 5 * 65536, 2 * 65536);
        await expectRead(ctx, 0, 9 * 65536);
      },
    },
    {
      name: "flush succeeds with and without pending writes",
      async run(ctx) {
        await ctx.node.flush();
        await write(ctx, 4097, pattern(9000, 11));
        await ctx.node.flush();
        await ctx.node.flush();
        await expectRead(ctx, 4000, 10000);
      },
    },
    {
      name: "block status covers the disk and agrees with the data",
      async run(ctx) {
        await write(ctx, 2 * 65536 + 5, pattern(1000, 13));
        await writeZeroes(ctx, 4 * 65536, 2 * 65536, ReqFlags.MAY_UNMAP);
        await write(ctx, 7 * 65536 - 1, pattern(2, 14));
        for (const wantZero of [true, false]) await walkBlockStatus(ctx, wantZero);
        const length = ctx.node.getLength();
        const past = await ctx.node.blockStatus(length, 512);
        assertEquals(past.pnum, 0, "pnum at the end");
        assert(past.status & BlockStatusFlags.EOF, "block status at the end says EOF");
      },
    },
    {
      name: "reads past the end return zeros",
      async run(ctx) {
        const length = ctx.node.getLength();
        await write(ctx, length - 100, pattern(100, 17));
        const got = await readBuf(ctx.node, length - 50, 4096 + 50);
        assertEquals(ctx.node.getLength(), length, "length after the read");
        assertBytesEqual(got.subarray(50), new Uint8Array(4096), "bytes past the end", length);
        if (ctx.caps.persistent) {
          assertBytesEqual(got.subarray(0, 50), ctx.model.read(length - 50, 50), "last bytes");
        }
        const beyond = await readBuf(ctx.node, length + 1000, 513);
        assertBytesEqual(beyond, new Uint8Array(513), "read wholly past the end");
      },
    },
    {
      name: "resize grows and shrinks, and cut-off data stays gone",
      applies: (caps) => caps.resize,
      async run(ctx) {
        const { node, model } = ctx;
        const length = node.getLength();
        // Sizes in whole 512-byte sectors, which every format takes (qcow2 refuses others,
        // as QEMU's).
        await write(ctx, length - 1000, pattern(1000, 19));
        await node.truncate(length + 70144);
        model.truncate(length + 70144);
        assertEquals(node.getLength(), length + 70144, "length after growing");
        await expectRead(ctx, length - 1000, 71144);
        await node.truncate(length - 512);
        model.truncate(length - 512);
        assertEquals(node.getLength(), length - 512, "length after shrinking");
        await expectRead(ctx, length - 1000, 488);
        await node.truncate(length);
        model.truncate(length);
        assertEquals(node.getLength(), length, "length after growing back");
        await expectRead(ctx, length - 1000, 1000);
      },
    },
    {
      name: "resize is refused with ENOTSUP",
      applies: (caps) => !caps.resize,
      async run(ctx) {
        const length = ctx.node.getLength();
        await assertRejectsWith(ctx.node.truncate(length + 65536), "ENOTSUP", "grow");
        await assertRejectsWith(ctx.node.truncate(length - 512), "ENOTSUP", "shrink");
        assertEquals(ctx.node.getLength(), length, "length after refused resizes");
      },
    },
    {
      name: "a write past the end grows the disk",
      applies: (caps) => caps.growsOnWrite,
      async run(ctx) {
        const length = ctx.node.getLength();
        // The new length is the end of the write, or that rounded up to a whole 512-byte
        // sector where the driver counts in sectors as QEMU's (file); the rest reads zeros.
        const grown = (end: number, what: string) => {
          const got = ctx.node.getLength();
          assert(
            got === end || got === Math.ceil(end / 512) * 512,
            `${what}: length ${got}, want ${end} or ${Math.ceil(end / 512) * 512}`,
          );
        };
        await write(ctx, length - 10, pattern(1000, 23));
        grown(length + 990, "length after the write");
        await expectRead(ctx, length - 20, 1020);
        await write(ctx, length + 5000, pattern(7, 29));
        grown(length + 5007, "length after a write beyond a gap");
        await expectRead(ctx, length, 5007);
      },
    },
    {
      name: "a read-only node refuses writes with EPERM",
      readOnly: true,
      async run(ctx) {
        const { node } = ctx;
        assert(!node.writable, "the node is read-only");
        await assertRejectsWith(node.write(4097, pattern(513, 31)), "EPERM", "write");
        await assertRejectsWith(node.pwriteZeroes(0, 65536), "EPERM", "write-zeroes");
        await assertRejectsWith(node.pdiscard(0, 65536), "EPERM", "discard");
        await assertRejectsWith(node.truncate(node.getLength() + 512), "EACCES", "truncate");
        await expectRead(ctx, 4000, 1000);
      },
    },
    {
      name: "invalid requests fail with EIO and leave the node usable",
      async run(ctx) {
        const { node } = ctx;
        const buf = new Uint8Array(512);
        await assertRejectsWith(node.read(-1, buf), "EIO", "read at -1");
        await assertRejectsWith(node.write(-512, buf), "EIO", "write at -512");
        await assertRejectsWith(node.pwriteZeroes(-1, 10), "EIO", "write-zeroes at -1");
        await assertRejectsWith(node.pdiscard(-1, 10), "EIO", "discard at -1");
        await assertRejectsWith(node.read(1.5, buf), "EIO", "read at 1.5");
        await assertRejectsWith(node.blockStatus(-1, 10), "EIO", "block status at -1");
        await write(ctx, 1, pattern(511, 37));
        await expectRead(ctx, 0, 1024);
      },
    },
    {
      name: "random operations agree with the model",
      async run(ctx) {
        const span = Math.min(ctx.node.getLength(), 1024 * 1024);
        const next = rng(0x5eed);
        for (let i = 0; i < 300; i++) {
          const offset = next(span - 1);
          const bytes = 1 + next(Math.min(span - offset, 70000));
          switch (next(4)) {
            case 0:
              await write(ctx, offset, pattern(bytes, i));
              break;
            case 1:
              await writeZeroes(ctx, offset, bytes, next(2) ? ReqFlags.MAY_UNMAP : 0);
              break;
            case 2:
              await discardAndCheck(ctx, offset, bytes);
              break;
            default:
              await expectRead(ctx, offset, bytes);
          }
        }
        await expectRead(ctx, 0, span);
      },
    },
  ];
}

/** Walks block status over the whole node, checking coverage and ZERO answers. */
async function walkBlockStatus(ctx: CaseContext, wantZero: boolean): Promise<void> {
  const { node, model, caps } = ctx;
  const length = node.getLength();
  for (let offset = 0; offset < length;) {
    const st = await node.blockStatus(offset, length - offset, wantZero);
    const where = `block status at ${offset} (wantZero ${wantZero})`;
    assert(st.pnum > 0 && st.pnum <= length - offset, `${where}: pnum ${st.pnum} out of range`);
    if (st.status & BlockStatusFlags.OFFSET_VALID) {
      assert(st.map !== undefined && st.file !== undefined, `${where}: OFFSET_VALID without map`);
    }
    if (st.status & BlockStatusFlags.ZERO) {
      if (caps.persistent) {
        assert(model.isZero(offset, st.pnum), `${where}: ZERO over ${st.pnum} bytes of data`);
      }
      const n = Math.min(st.pnum, READ_PIECE);
      const got = await readBuf(node, offset, n);
      assertBytesEqual(got, new Uint8Array(n), `${where}: range reported ZERO`, offset);
    }
    const atEnd = offset + st.pnum === length;
    assertEquals(
      (st.status & BlockStatusFlags.EOF) !== 0,
      atEnd,
      `${where}: EOF bit (range ends at ${offset + st.pnum} of ${length})`,
    );
    offset += st.pnum;
  }
}

/** Whether `c` applies to a target with `caps`. */
export function caseApplies(c: ConformanceCase, caps: ConformanceCapabilities): boolean {
  return c.applies ? c.applies(caps) : true;
}
