import { Graph } from "@blockgraph/core";
import {
  assert,
  assertBytesEqual,
  assertEquals,
  assertRejectsWith,
} from "../../conformance/mod.ts";
import { formatQcow2, type Qcow2CreateParams } from "./create.ts";
import { setU64, viewOf } from "./format.ts";
import { parseHeader, serializeHeader } from "./header.ts";
import { qcow2Params, registry } from "./test_fixtures.ts";

const P: Qcow2CreateParams = qcow2Params();

/** Formats a memory node, lets `patch` change the first cluster, and opens it as qcow2. */
async function openPatched(
  patch: (view: DataView, buf: Uint8Array) => void,
  readOnly = false,
  p: Qcow2CreateParams = P,
): Promise<{ graph: Graph; open: Promise<unknown> }> {
  const graph = new Graph({ registry });
  const mem = await graph.open({ driver: "memory", "node-name": "m" }, "t");
  await formatQcow2(mem, p);
  const buf = new Uint8Array(p.clusterSize);
  await mem.read(0, buf);
  patch(viewOf(buf), buf);
  await mem.write(0, buf);
  const open = graph.open({ driver: "qcow2", file: "m", "read-only": readOnly }, "q");
  open.catch(() => {});
  await open.then((n) => (n as { unref(h: string): Promise<void> }).unref("q"), () => {});
  await mem.unref("t");
  return { graph, open };
}

async function expectOpenError(
  patch: (view: DataView, buf: Uint8Array) => void,
  code: string,
  text: string,
  readOnly = false,
): Promise<void> {
  const { graph, open } = await openPatched(patch, readOnly);
  try {
    await assertRejectsWith(open, code as "EINVAL", text);
    const err = await open.then(() => null, (e) => e as Error);
    assert(err!.message.includes(text), `message '${err!.message}' names '${text}'`);
  } finally {
    await graph.closeAll();
  }
}

Deno.test("qcow2 open refuses a bad magic", () =>
  expectOpenError((v) => v.setUint32(0, 0x514649fc), "EINVAL", "Image is not in qcow2 format"));

Deno.test("qcow2 open refuses version 4", () =>
  expectOpenError((v) => v.setUint32(4, 4), "ENOTSUP", "Unsupported qcow2 version 4"));

Deno.test("qcow2 open refuses cluster_bits 22", () =>
  expectOpenError((v) => v.setUint32(20, 22), "EINVAL", "Unsupported cluster size: 2^22"));

Deno.test("qcow2 open names unknown incompatible features from the feature table", () =>
  expectOpenError(
    (v) => v.setBigUint64(72, 1n << 63n),
    "ENOTSUP",
    "Unsupported qcow2 feature(s): Unknown incompatible feature: 8000000000000000",
  ));

Deno.test("qcow2 open refuses a corrupt image read/write but opens it read-only", async () => {
  await expectOpenError(
    (v) => v.setBigUint64(72, 2n),
    "EACCES",
    "qcow2: Image is corrupt; cannot be opened read/write",
  );
  const { graph, open } = await openPatched((v) => v.setBigUint64(72, 2n), true);
  await open;
  await graph.closeAll();
});

Deno.test("qcow2 open refuses an L1 table outside the file or over the header", async () => {
  await expectOpenError(
    (v) => setU64(v, 40, 1 << 30),
    "EINVAL",
    "beyond the end of the image file",
  );
  await expectOpenError((v) => setU64(v, 40, 0), "EINVAL", "overlaps the qcow2 header");
  await expectOpenError((v) => setU64(v, 40, 100), "EINVAL", "Active L1 table offset invalid");
});

Deno.test("qcow2 header round trip keeps unknown extensions byte for byte", () => {
  const cluster = new Uint8Array(65536);
  const h0 = {
    ...parseHeaderOf(P),
  };
  h0.extensions.push({ type: 0x12345678, data: new Uint8Array([1, 2, 3, 4, 5]) });
  h0.backingFile = "base.img";
  cluster.set(serializeHeader(h0));
  const h1 = parseHeader(cluster);
  const ext = h1.extensions.find((e) => e.type === 0x12345678)!;
  assertBytesEqual(ext.data, new Uint8Array([1, 2, 3, 4, 5]), "unknown extension");
  assertEquals(h1.backingFile, "base.img");
  assertBytesEqual(serializeHeader(h1), serializeHeader(h0), "serialised again");
});

function parseHeaderOf(p: Qcow2CreateParams) {
  return parseHeader(
    serializeHeader({
      version: p.version,
      backingFileOffset: 0,
      backingFileSize: 0,
      clusterBits: Math.log2(p.clusterSize),
      size: p.size,
      cryptMethod: 0,
      l1Size: 1,
      l1TableOffset: 3 * p.clusterSize,
      refcountTableOffset: p.clusterSize,
      refcountTableClusters: 1,
      nbSnapshots: 0,
      snapshotsOffset: 0,
      incompatible: 0n,
      compatible: 0n,
      autoclear: 0n,
      refcountOrder: 4,
      headerLength: 112,
      compressionType: 0,
      tail: new Uint8Array(7),
      extensions: [],
      backingFile: undefined,
    }),
  );
}

Deno.test("qcow2 marks the image corrupt when an L2 entry points into metadata", async () => {
  const graph = new Graph({ registry });
  const events: Record<string, unknown>[] = [];
  graph.events.on("BLOCK_IMAGE_CORRUPTED", (e) => events.push(e.data));
  const mem = await graph.open({ driver: "memory", "node-name": "m" }, "t");
  await formatQcow2(mem, P);
  const q = await graph.open({ driver: "qcow2", file: "m" }, "q");
  await q.write(0, new Uint8Array(512).fill(1));
  await q.flush();
  await q.unref("q");
  // Point guest cluster 0 at the refcount table (cluster 1), COPIED.
  const l1 = new Uint8Array(8);
  await mem.read(3 * 65536, l1);
  const l2Offset = Number(viewOf(l1).getBigUint64(0) & 0x00fffffffffffe00n);
  const entry = new Uint8Array(8);
  viewOf(entry).setBigUint64(0, (1n << 63n) | 65536n);
  await mem.write(l2Offset, entry);
  const q2 = await graph.open({ driver: "qcow2", file: "m" }, "q");
  const err = await q2.write(0, new Uint8Array(512)).then(
    () => null,
    (e) => e as Error & { code: string },
  );
  assertEquals(err?.code, "EIO", "the write fails with EIO");
  assertEquals(events.length, 1, "one BLOCK_IMAGE_CORRUPTED event");
  assertEquals(events[0]!.fatal, true);
  assert(String(events[0]!.msg).includes("refcount table"), `msg: ${events[0]!.msg}`);
  await assertRejectsWith(q2.read(0, new Uint8Array(512)), "EIO", "read after corruption");
  await q2.unref("q");
  const hdr = new Uint8Array(8);
  await mem.read(72, hdr);
  assertEquals(viewOf(hdr).getBigUint64(0) & 2n, 2n, "the corrupt bit is set on disk");
  await mem.unref("t");
  await graph.closeAll();
});
