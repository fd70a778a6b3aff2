import {
  assert,
  assertBytesEqual,
  assertEquals,
  assertRejectsWith,
} from "../../conformance/mod.ts";
import {
  compressCluster,
  compressedEntry,
  compressedPlace,
  decompressCluster,
  zstdFrameLength,
} from "./compressed.ts";

const CLUSTER = 65536;

function compressible(): Uint8Array {
  const data = new Uint8Array(CLUSTER);
  for (let i = 0; i < data.length; i++) data[i] = (i >> 6) & 0xff;
  return data;
}

for (const [name, type] of [["zlib", 0], ["zstd", 1]] as const) {
  Deno.test(`compressCluster and decompressCluster round-trip a cluster with ${name}`, async () => {
    const data = compressible();
    const packed = await compressCluster(data, type);
    assert(packed !== null && packed.length < CLUSTER, "compresses");
    // A stream is read with whatever follows it up to the end of its last sector: padding
    // (zeros where the image file ends) or the next cluster's data.
    for (const fill of [0x00, 0xaa]) {
      const stored = new Uint8Array(Math.ceil((packed.length + 1) / 512) * 512).fill(fill);
      stored.set(packed);
      assertBytesEqual(await decompressCluster(stored, CLUSTER, type), data, `round trip ${fill}`);
    }
    const two = new Uint8Array(packed.length * 2);
    two.set(packed);
    two.set(packed, packed.length);
    assertBytesEqual(await decompressCluster(two, CLUSTER, type), data, "next cluster follows");
  });

  Deno.test(`compressCluster leaves a cluster that does not compress (${name})`, async () => {
    const noise = new Uint8Array(CLUSTER);
    crypto.getRandomValues(noise.subarray(0, CLUSTER / 2));
    crypto.getRandomValues(noise.subarray(CLUSTER / 2));
    assertEquals(await compressCluster(noise, type), null, "incompressible");
  });
}

Deno.test("decompressCluster fails with EIO on a stream that is too short or broken", async () => {
  const packed = (await compressCluster(compressible(), 0))!;
  await assertRejectsWith(decompressCluster(packed, CLUSTER * 2, 0), "EIO", "short");
  await assertRejectsWith(
    decompressCluster(new Uint8Array(512).fill(0xff), CLUSTER, 1),
    "EIO",
    "zstd",
  );
});

Deno.test("zstdFrameLength finds the end of a frame, and -1 for a cut or foreign one", async () => {
  const packed = (await compressCluster(compressible(), 1))!;
  const padded = new Uint8Array(packed.length + 700);
  padded.set(packed);
  assertEquals(zstdFrameLength(padded), packed.length, "frame with padding after it");
  assertEquals(zstdFrameLength(packed), packed.length, "frame alone");
  assertEquals(zstdFrameLength(packed.subarray(0, packed.length - 1)), -1, "cut short");
  assertEquals(zstdFrameLength(new Uint8Array(512)), -1, "zeros");
});

Deno.test("compressedEntry and compressedPlace agree", () => {
  const [hi, lo] = compressedEntry(0x123456 + 100, 3000, 16);
  assert((hi & 0x40000000) !== 0, "the compressed flag");
  const p = compressedPlace(hi, lo, 16);
  assertEquals(p.offset, 0x123456 + 100, "offset");
  assertEquals(p.sectorStart, p.offset - (p.offset % 512), "sector start");
  assert(p.bytes >= 3000 && p.bytes < 3000 + 512, `bytes (${p.bytes})`);
});
