/**
 * Sector encryption as dm-crypt, LUKS and qcow2 use it: a block cipher in a mode (`xts`,
 * `cbc`, `ecb`) over sectors of 512 bytes, each with its own IV from an IV generator
 * (`plain`: the sector number's low 32 bits; `plain64`: all 64; `essiv`: the sector number
 * encrypted with a hash of the key). Only AES is here (128, 192 and 256-bit keys; XTS takes
 * two such keys): the C library of Deno's `node:crypto` has no other block cipher, and QEMU
 * writes AES unless told otherwise.
 *
 * Deno's `node:crypto` has AES in ECB and CBC but not XTS; XTS is built on ECB: the tweaks of
 * a whole request are computed first (one ECB call encrypts every sector's IV, then the
 * doubling in GF(2^128) runs in JavaScript), and the data then takes one ECB call between two
 * XORs, whatever its length. CBC decryption is one ECB call too (each plaintext block is the
 * decrypted block XOR the ciphertext block before it); CBC encryption is chained, one ECB
 * call per 16-byte block position, each taking that block of every sector (Deno has no
 * `aes-192-cbc`). `node:crypto` must have been loaded (`loadNodeCrypto`) before a cipher is
 * made.
 *
 * @module
 */

import type { Cipher, Decipher } from "node:crypto";
import { BlockError } from "@blockgraph/core";
import { nodeCrypto } from "./node_crypto.ts";

/** The sector size of LUKS and qcow2 encryption. */
export const CRYPT_SECTOR = 512;
const BLOCK = 16;

/** A cipher mode. */
export type CipherMode = "xts" | "cbc" | "ecb";
/** An IV generator. */
export type IvGenAlg = "plain" | "plain64" | "essiv";

/** What a {@link SectorCipher} is made of. */
export interface SectorCipherSpec {
  /** The block cipher: `aes` (the only one available). */
  readonly alg: string;
  /** The mode. */
  readonly mode: CipherMode;
  /** The IV generator (ignored by `ecb`). */
  readonly ivgen: IvGenAlg;
  /** ESSIV's hash (`sha256`, ...). */
  readonly ivHash?: string;
  /** The key (XTS: both halves). */
  readonly key: Uint8Array;
}

/** An ECB transform with a fixed key, reused for every call (ECB keeps no state). */
type Ecb = (data: Uint8Array) => Uint8Array;

function aesName(keyBytes: number): string {
  if (keyBytes !== 16 && keyBytes !== 24 && keyBytes !== 32) {
    throw new BlockError("EINVAL", `Invalid AES key length ${keyBytes} bytes`);
  }
  return `aes-${keyBytes * 8}-ecb`;
}

function ecb(key: Uint8Array, encrypt: boolean): Ecb {
  const name = aesName(key.length);
  const crypto = nodeCrypto();
  const c: Cipher | Decipher = encrypt
    ? crypto.createCipheriv(name, key, null)
    : crypto.createDecipheriv(name, key, null);
  c.setAutoPadding(false);
  return (data) => {
    const out = c.update(data);
    return new Uint8Array(out.buffer, out.byteOffset, out.length);
  };
}

function words(b: Uint8Array): Int32Array | null {
  return b.byteOffset % 4 === 0 && b.length % 4 === 0
    ? new Int32Array(b.buffer, b.byteOffset, b.length / 4)
    : null;
}

/** `dst = a ^ b`, a word at a time where the three are aligned (a byte at a time otherwise). */
function xorInto(dst: Uint8Array, a: Uint8Array, b: Uint8Array): void {
  const [d, x, y] = [words(dst), words(a), words(b)];
  if (d && x && y) {
    for (let i = 0; i < d.length; i++) d[i] = x[i]! ^ y[i]!;
    return;
  }
  for (let i = 0; i < dst.length; i++) dst[i] = a[i]! ^ b[i]!;
}

/**
 * A sector cipher: encrypts and decrypts whole sectors in place, numbered from the sector
 * given (the IV of sector `n` depends on `n` alone).
 */
export class SectorCipher {
  readonly #mode: CipherMode;
  readonly #ivgen: IvGenAlg;
  readonly #enc: Ecb;
  readonly #dec: Ecb;
  /** XTS: the tweak key's encryption; ESSIV: the IV key's. */
  readonly #ivEnc: Ecb | null;

  /** Makes the cipher; an algorithm, mode or IV generator it does not have is refused. */
  constructor(spec: SectorCipherSpec) {
    if (spec.alg !== "aes") {
      throw new BlockError("ENOTSUP", `Cipher algorithm '${spec.alg}' is not supported`);
    }
    if (spec.mode !== "xts" && spec.mode !== "cbc" && spec.mode !== "ecb") {
      throw new BlockError("ENOTSUP", `Cipher mode '${spec.mode}' is not supported`);
    }
    if (spec.ivgen !== "plain" && spec.ivgen !== "plain64" && spec.ivgen !== "essiv") {
      throw new BlockError("ENOTSUP", `IV generator '${spec.ivgen}' is not supported`);
    }
    this.#mode = spec.mode;
    this.#ivgen = spec.ivgen;
    let key = spec.key;
    let ivEnc: Ecb | null = null;
    if (spec.mode === "xts") {
      const half = key.length / 2;
      ivEnc = ecb(key.subarray(half), true);
      key = key.subarray(0, half);
    } else if (spec.ivgen === "essiv" && spec.mode !== "ecb") {
      const hash = spec.ivHash ?? "sha256";
      let digest: Uint8Array;
      try {
        digest = nodeCrypto().createHash(hash).update(key).digest();
      } catch {
        throw new BlockError("ENOTSUP", `Hash algorithm '${hash}' is not supported`);
      }
      ivEnc = ecb(digest, true);
    }
    this.#enc = ecb(key, true);
    this.#dec = ecb(key, false);
    this.#ivEnc = ivEnc;
  }

  /** The IVs of `count` sectors from `sector`, 16 bytes each (before ESSIV or XTS's cipher). */
  #ivs(sector: number, count: number): Uint8Array {
    const ivs = new Uint8Array(count * BLOCK);
    const v = new DataView(ivs.buffer);
    for (let i = 0; i < count; i++) {
      const n = sector + i;
      v.setUint32(i * BLOCK, n % 0x100000000, true);
      if (this.#ivgen !== "plain") v.setUint32(i * BLOCK + 4, Math.floor(n / 0x100000000), true);
    }
    return this.#ivEnc ? this.#ivEnc(ivs) : ivs;
  }

  #check(buf: Uint8Array): number {
    if (buf.length % CRYPT_SECTOR !== 0) {
      throw new BlockError("EINVAL", `Length ${buf.length} is not a multiple of the sector size`);
    }
    return buf.length / CRYPT_SECTOR;
  }

  /** XTS's tweak of every 16-byte block of `count` sectors from `sector`. */
  #tweaks(sector: number, count: number): Uint8Array {
    const first = this.#ivs(sector, count);
    const t = new Uint8Array(count * CRYPT_SECTOR);
    // 32-bit words in the machine's order: little-endian on every platform Deno runs on,
    // which is the byte order XTS multiplies in.
    const w = new Uint32Array(t.buffer);
    for (let s = 0; s < count; s++) {
      t.set(first.subarray(s * BLOCK, s * BLOCK + BLOCK), s * CRYPT_SECTOR);
      let a = w[s * 128]!, b = w[s * 128 + 1]!, c = w[s * 128 + 2]!, d = w[s * 128 + 3]!;
      for (let at = s * 128 + 4; at < (s + 1) * 128; at += 4) {
        // The previous tweak times x in GF(2^128).
        const carry = d >>> 31;
        d = ((d << 1) | (c >>> 31)) >>> 0;
        c = ((c << 1) | (b >>> 31)) >>> 0;
        b = ((b << 1) | (a >>> 31)) >>> 0;
        a = ((a << 1) ^ (carry ? 0x87 : 0)) >>> 0;
        w[at] = a;
        w[at + 1] = b;
        w[at + 2] = c;
        w[at + 3] = d;
      }
    }
    return t;
  }

  /** ECB and XTS, the same both ways but for the block transform `ecb`. */
  #blockwise(buf: Uint8Array, sector: number, count: number, ecb: Ecb): void {
    if (this.#mode === "ecb") {
      buf.set(ecb(buf));
      return;
    }
    const t = this.#tweaks(sector, count);
    xorInto(buf, buf, t);
    xorInto(buf, ecb(buf), t);
  }

  /** Encrypts `buf` (whole sectors, the first numbered `sector`) in place. */
  encrypt(buf: Uint8Array, sector: number): void {
    const count = this.#check(buf);
    if (count === 0) return;
    if (this.#mode !== "cbc") return this.#blockwise(buf, sector, count, this.#enc);
    // CBC chains each block to the one before it, so a sector's blocks go in turn; the same
    // block of every sector goes in one ECB call (32 calls, whatever the length).
    let prev = this.#ivs(sector, count);
    const column = new Uint8Array(count * BLOCK);
    for (let at = 0; at < CRYPT_SECTOR; at += BLOCK) {
      for (let s = 0; s < count; s++) {
        const from = s * CRYPT_SECTOR + at;
        for (let i = 0; i < BLOCK; i++) {
          column[s * BLOCK + i] = buf[from + i]! ^ prev[s * BLOCK + i]!;
        }
      }
      prev = this.#enc(column);
      for (let s = 0; s < count; s++) {
        buf.set(prev.subarray(s * BLOCK, s * BLOCK + BLOCK), s * CRYPT_SECTOR + at);
      }
    }
  }

  /** Decrypts `buf` (whole sectors, the first numbered `sector`) in place. */
  decrypt(buf: Uint8Array, sector: number): void {
    const count = this.#check(buf);
    if (count === 0) return;
    if (this.#mode !== "cbc") return this.#blockwise(buf, sector, count, this.#dec);
    const ivs = this.#ivs(sector, count);
    const plain = this.#dec(buf);
    // Each block XOR the ciphertext block before it (the sector's IV for its first).
    for (let s = 0; s < count; s++) {
      const at = s * CRYPT_SECTOR;
      for (let i = 0; i < BLOCK; i++) plain[at + i] = plain[at + i]! ^ ivs[s * BLOCK + i]!;
      for (let i = at + BLOCK; i < at + CRYPT_SECTOR; i++) plain[i] = plain[i]! ^ buf[i - BLOCK]!;
    }
    buf.set(plain);
  }
}
