/**
 * What a qcow2 extent answers for block status (QEMU's `qcow2_co_block_status`): data mapped
 * into the data file, zeros (with or without a host cluster), compressed data, or nothing in
 * this layer; and the corruption QEMU reports for a compressed cluster in an image with an
 * external data file, which reads meet too.
 *
 * @module
 */

import { type BlockStatus, BlockStatusFlags } from "@blockgraph/core";
import type { Extent } from "./extent.ts";
import { hex } from "./format.ts";
import type { Qcow2Image } from "./image.ts";

/** QEMU's corruption for a compressed cluster (at guest `offset`) with an external data file. */
export function compressedWithDataFile(image: Qcow2Image, offset: number): Error {
  const g = Math.floor(offset / image.cs);
  const l2Off = image.l1[Math.floor(g / image.l2Entries)] ?? 0;
  return image.corrupt(
    `Compressed cluster entry found in image with external data file (L2 offset: ${
      hex(l2Off)
    }, L2 index: ${hex(g % image.l2Entries)})`,
  );
}

/**
 * The block status of `ext`, which starts at guest `offset`. The host offset of an encrypted
 * image's data is not reported (as QEMU does not): its bytes there are not the guest's.
 */
export function extentStatus(image: Qcow2Image, ext: Extent, offset: number): BlockStatus {
  const file = image.data;
  const mapped = image.encryption === null;
  switch (ext.kind) {
    case "normal":
    case "zero-alloc": {
      const what = ext.kind === "normal" ? BlockStatusFlags.DATA : BlockStatusFlags.ZERO;
      if (!mapped) return { status: what, pnum: ext.bytes };
      return { status: what | BlockStatusFlags.OFFSET_VALID, pnum: ext.bytes, map: ext.host, file };
    }
    case "zero":
      return { status: BlockStatusFlags.ZERO, pnum: ext.bytes };
    case "unallocated-alloc":
      // Reads go to the backing file, but the host cluster is there (QEMU reports it).
      if (!mapped) return { status: 0, pnum: ext.bytes };
      return { status: BlockStatusFlags.OFFSET_VALID, pnum: ext.bytes, map: ext.host, file };
    case "compressed":
      if (image.external) throw compressedWithDataFile(image, offset);
      return { status: BlockStatusFlags.DATA | BlockStatusFlags.COMPRESSED, pnum: ext.bytes };
    default:
      return { status: 0, pnum: ext.bytes };
  }
}
