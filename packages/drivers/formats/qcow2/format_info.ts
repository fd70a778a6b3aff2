/**
 * What `img info` shows of a qcow2 image under "Format specific information" (QEMU's
 * `ImageInfoSpecificQCow2`), with QEMU's field names.
 *
 * @module
 */

import type { FormatSpecificInfo } from "@blockgraph/core";
import { bitmapInfo } from "./bitmaps.ts";
import { COMPAT_LAZY_REFCOUNTS, Incompat } from "./format.ts";
import { dataFileName } from "./header.ts";
import type { Qcow2Image } from "./image.ts";

/** The format-specific facts of `image`. */
export function qcow2FormatInfo(image: Qcow2Image): FormatSpecificInfo {
  const h = image.header;
  const info: FormatSpecificInfo = {
    compat: h.version >= 3 ? "1.1" : "0.10",
    "compression-type": h.compressionType === 1 ? "zstd" : "zlib",
  };
  if (h.version >= 3) {
    info["lazy-refcounts"] = (h.compatible & BigInt(COMPAT_LAZY_REFCOUNTS)) !== 0n;
  }
  info["refcount-bits"] = 2 ** h.refcountOrder;
  if (image.encryption) info.encrypt = image.encryption;
  const bitmaps = bitmapInfo(image);
  if (bitmaps) info.bitmaps = bitmaps;
  const dataFile = dataFileName(h);
  if (dataFile !== undefined) info["data-file"] = dataFile;
  if (image.external) info["data-file-raw"] = image.dataRaw;
  if (h.version >= 3) {
    info.corrupt = (h.incompatible & BigInt(Incompat.CORRUPT)) !== 0n;
    info["extended-l2"] = (h.incompatible & BigInt(Incompat.EXTL2)) !== 0n;
  }
  return info;
}
