/**
 * LUKS's anti-forensic splitter (the LUKS 1 on-disk format specification, section "AF
 * splitter"): a key of `n` bytes is stored as `stripes` blocks of `n` bytes, all but the last
 * random, so that losing any one block loses the key. Merging XORs the blocks in turn into an
 * accumulator that is "diffused" after each of them (every digest-sized piece `i` replaced by
 * the hash of `i` as a big-endian u32 followed by the piece, the last piece cut to its length),
 * and XORs the last block into the result. `node:crypto` must have been loaded
 * (`loadNodeCrypto`).
 *
 * @module
 */

import { BlockError } from "@blockgraph/core";
import { nodeCrypto } from "./node_crypto.ts";
import { hashDigestBytes } from "./pbkdf2.ts";

function diffuse(hash: string, digestLen: number, block: Uint8Array): void {
  const iv = new Uint8Array(4);
  const view = new DataView(iv.buffer);
  for (let at = 0, i = 0; at < block.length; at += digestLen, i++) {
    const piece = block.subarray(at, Math.min(at + digestLen, block.length));
    view.setUint32(0, i);
    const d = nodeCrypto().createHash(hash).update(iv).update(piece).digest();
    piece.set(d.subarray(0, piece.length));
  }
}

/** The key of `blockLen` bytes that `stripes` blocks of `material` hold. */
export function afMerge(
  hash: string,
  blockLen: number,
  stripes: number,
  material: Uint8Array,
): Uint8Array {
  if (material.length < blockLen * stripes) {
    throw new BlockError("EINVAL", "LUKS key material is shorter than its stripes");
  }
  const digestLen = hashDigestBytes(hash);
  const acc = new Uint8Array(blockLen);
  for (let s = 0; s < stripes - 1; s++) {
    const at = s * blockLen;
    for (let i = 0; i < blockLen; i++) acc[i] = acc[i]! ^ material[at + i]!;
    diffuse(hash, digestLen, acc);
  }
  const last = (stripes - 1) * blockLen;
  for (let i = 0; i < blockLen; i++) acc[i] = acc[i]! ^ material[last + i]!;
  return acc;
}

/** `key` split into `stripes` blocks: random ones, then the one that merges back to `key`. */
export function afSplit(hash: string, key: Uint8Array, stripes: number): Uint8Array {
  const n = key.length;
  const digestLen = hashDigestBytes(hash);
  const out = new Uint8Array(n * stripes);
  const random = out.subarray(0, n * (stripes - 1));
  for (let at = 0; at < random.length; at += 65536) {
    crypto.getRandomValues(random.subarray(at, Math.min(at + 65536, random.length)));
  }
  const acc = new Uint8Array(n);
  for (let s = 0; s < stripes - 1; s++) {
    for (let i = 0; i < n; i++) acc[i] = acc[i]! ^ out[s * n + i]!;
    diffuse(hash, digestLen, acc);
  }
  for (let i = 0; i < n; i++) out[(stripes - 1) * n + i] = acc[i]! ^ key[i]!;
  return out;
}
