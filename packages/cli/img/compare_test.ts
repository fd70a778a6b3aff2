import { deepStrictEqual as assertEquals } from "node:assert";
import { captureIo } from "../common/cli_io.ts";
import { runImg } from "./run_img.ts";

const MIB = 1 << 20;

/** `img compare` of `a` and `b` (raw files written from the arrays, `null`: a hole). */
async function compare(
  a: (Uint8Array | null)[],
  b: (Uint8Array | null)[],
  extra: string[] = [],
): Promise<[number, string, string]> {
  const dir = await Deno.makeTempDir({ prefix: "blockgraph-compare-" });
  try {
    const write = async (path: string, chunks: (Uint8Array | null)[]) => {
      const f = await Deno.open(path, { write: true, create: true });
      let at = 0;
      for (const c of chunks) {
        if (c) {
          await f.seek(at, Deno.SeekMode.Start);
          for (let done = 0; done < c.length;) done += await f.write(c.subarray(done));
        }
        at += MIB;
      }
      await f.truncate(at);
      f.close();
    };
    await write(`${dir}/a.raw`, a);
    await write(`${dir}/b.raw`, b);
    const io = captureIo();
    const status = await runImg(
      ["compare", "-f", "raw", "-F", "raw", ...extra, `${dir}/a.raw`, `${dir}/b.raw`],
      io,
    );
    return [status, io.stdout, io.stderr];
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

const fill = (v: number) => new Uint8Array(MIB).fill(v);
const withByte = (base: number, at: number, v: number) => {
  const c = fill(base);
  c[at] = v;
  return c;
};

Deno.test("img compare reads ahead but reports the first difference, in offset order", async () => {
  // 12 MiB of data, every MiB allocated on both sides: the chunks after a difference are read
  // while it is compared, and differ too (later), so only order picks the right line.
  const a = Array.from({ length: 12 }, () => fill(1));
  const b = Array.from({ length: 12 }, (_, i) => (i >= 5 ? withByte(1, 700, 9) : fill(1)));
  assertEquals(await compare(a, b), [1, `Content mismatch at offset ${5 * MIB + 512}!\n`, ""]);
  // A side that holds data where the other has a hole: the first non-zero sector.
  const c = Array.from({ length: 12 }, (_, i) => (i === 7 ? null : fill(1)));
  const d = Array.from({ length: 12 }, (_, i) => (i === 7 ? withByte(0, 4096, 3) : fill(1)));
  assertEquals(await compare(c, d), [1, `Content mismatch at offset ${7 * MIB + 4096}!\n`, ""]);
  // Equal, with holes and data mixed, and a longer second image whose tail is zeros.
  const e = Array.from({ length: 10 }, (_, i) => (i % 3 ? fill(i) : null));
  const f = [...e, null, fill(0)];
  assertEquals(await compare(e, f), [
    0,
    "Warning: Image size mismatch!\nImages are identical.\n",
    "",
  ]);
  // ...but data in that tail is a mismatch after the warning.
  const g = [...e, null, withByte(0, 1, 1)];
  assertEquals(await compare(e, g), [
    1,
    `Warning: Image size mismatch!\nContent mismatch at offset ${11 * MIB}!\n`,
    "",
  ]);
  // Strict mode stops at the first block-status difference, after the chunks before it (the
  // expectations are qemu-img 7.2's on the same files).
  const two = fill(2);
  const p = [two, two, two, two, two, two, null, null];
  const q = [two, two, two, two, two, two, null, two];
  assertEquals(await compare(p, q, ["-s"]), [
    1,
    `Strict mode: Offset ${6 * MIB} block status mismatch!\n`,
    "",
  ]);
  const p2 = [two, two, withByte(2, 0, 0), two, two, two, null, null];
  assertEquals(await compare(p2, q, ["-s"]), [1, `Content mismatch at offset ${2 * MIB}!\n`, ""]);
});
