/**
 * PBKDF2 with HMAC (RFC 8018), the key derivation of LUKS's key slots and master key digest,
 * and the measurement of how many iterations a second this machine does, from which a new
 * LUKS header's iteration counts are set.
 *
 * The derivation runs in GNU Nettle (`libnettle.so.8`) over FFI when the library is there:
 * it is what QEMU's Debian build uses (through GnuTLS), and every Debian 12 system has it
 * (apt depends on GnuTLS). Deno's `node:crypto` PBKDF2 does about 1.4 million SHA-256
 * iterations a second here against Nettle's 8 million, so a key slot QEMU wrote with its
 * default `iter-time` of 2 s (about 8 million iterations of a 64-byte key) took 14 s to
 * unlock through `node:crypto` and takes as long as in QEMU through Nettle. Without Nettle,
 * or for a hash it has no PBKDF2 for (md5, sha224, ripemd160), `node:crypto` does it. Both
 * run off the JavaScript thread (a nonblocking FFI call; `node:crypto`'s pool), so the event
 * loop goes on during a derivation that takes seconds.
 *
 * @module
 */

import { BlockError } from "@blockgraph/core";
import { loadNodeCrypto } from "./node_crypto.ts";

/** Nettle's PBKDF2 functions by hash, with the hash's digest length. */
const NETTLE: Readonly<Record<string, { symbol: string; digest: number }>> = {
  sha1: { symbol: "nettle_pbkdf2_hmac_sha1", digest: 20 },
  sha256: { symbol: "nettle_pbkdf2_hmac_sha256", digest: 32 },
  sha384: { symbol: "nettle_pbkdf2_hmac_sha384", digest: 48 },
  sha512: { symbol: "nettle_pbkdf2_hmac_sha512", digest: 64 },
};

/** Digest lengths of the hashes only `node:crypto` derives with. */
const OTHER_DIGESTS: Readonly<Record<string, number>> = { md5: 16, sha224: 28, ripemd160: 20 };

/** (key length, key, iterations, salt length, salt, length, dst) */
const NETTLE_PARAMS = ["usize", "buffer", "u32", "usize", "buffer", "usize", "buffer"] as const;

type NettleFn = (
  keyLen: bigint,
  key: Uint8Array,
  iterations: number,
  saltLen: bigint,
  salt: Uint8Array,
  length: bigint,
  dst: Uint8Array,
) => Promise<void>;

let nettle: Record<string, NettleFn> | null | undefined;

/** Nettle's PBKDF2 functions, opened once; null when the library or FFI is not there. */
function nettleFunctions(): Record<string, NettleFn> | null {
  if (nettle !== undefined) return nettle;
  const symbols: Record<string, Deno.ForeignFunction> = {};
  for (const { symbol } of Object.values(NETTLE)) {
    symbols[symbol] = { parameters: NETTLE_PARAMS, result: "void", nonblocking: true };
  }
  try {
    const lib = Deno.dlopen("libnettle.so.8", symbols);
    const fns: Record<string, NettleFn> = {};
    for (const [hash, { symbol }] of Object.entries(NETTLE)) {
      fns[hash] = lib.symbols[symbol] as unknown as NettleFn;
    }
    nettle = fns;
  } catch {
    // No Nettle (or no --allow-ffi): node:crypto derives.
    nettle = null;
  }
  return nettle;
}

function unsupported(hash: string): BlockError {
  return new BlockError("ENOTSUP", `Hash algorithm '${hash}' is not supported`);
}

/**
 * The digest length of `hash`, one of the hashes LUKS names (for PBKDF2 and the AF
 * splitter); ENOTSUP for another.
 */
export function hashDigestBytes(hash: string): number {
  const bytes = NETTLE[hash]?.digest ?? OTHER_DIGESTS[hash];
  if (bytes === undefined) throw unsupported(hash);
  return bytes;
}

/** `bytes` of PBKDF2-HMAC-`hash` of `password` with `salt` and `iterations`. */
export async function pbkdf2(
  hash: string,
  password: Uint8Array,
  salt: Uint8Array,
  iterations: number,
  bytes: number,
): Promise<Uint8Array> {
  hashDigestBytes(hash);
  const out = new Uint8Array(bytes);
  const fn = nettleFunctions()?.[hash];
  if (fn) {
    // The FFI call reads the buffers on another thread: they must not move or change meanwhile.
    const pw = password.slice();
    const s = salt.slice();
    await fn(BigInt(pw.length), pw, iterations, BigInt(s.length), s, BigInt(bytes), out);
    return out;
  }
  const crypto = await loadNodeCrypto();
  return await new Promise((resolve, reject) => {
    try {
      crypto.pbkdf2(password, salt, iterations, bytes, hash, (err, key) => {
        if (err) reject(unsupported(hash));
        else resolve(new Uint8Array(key.buffer, key.byteOffset, key.length));
      });
    } catch {
      reject(unsupported(hash));
    }
  });
}

/** How long a measurement must run for its rate to count. */
const MEASURE_MS = 100;

/**
 * The iterations a second PBKDF2-HMAC-`hash` does here for each block of output (an output
 * of n digests' length costs n times the iterations). The count doubles from 2^14 until a
 * run takes {@link MEASURE_MS}: QEMU measures until its CPU clock, which counts in
 * milliseconds, shows 500 ms, twice for each new image (2.3 s of a `qemu-img create` here);
 * a microsecond wall clock needs less.
 */
export async function pbkdf2Rate(hash: string): Promise<number> {
  const digest = hashDigestBytes(hash);
  const password = new Uint8Array(32);
  const salt = new Uint8Array(32);
  crypto.getRandomValues(password);
  crypto.getRandomValues(salt);
  for (let iterations = 1 << 14;; iterations *= 2) {
    const start = performance.now();
    await pbkdf2(hash, password, salt, iterations, digest);
    const ms = performance.now() - start;
    if (ms >= MEASURE_MS || iterations >= 2 ** 31) return (iterations * 1000) / ms;
  }
}
