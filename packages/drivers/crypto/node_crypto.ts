/**
 * `node:crypto`, loaded at first need: importing it loads Deno's Node layer (several
 * milliseconds of a short command's start-up), which only encrypted images need. Callers
 * `await loadNodeCrypto()` before anything that uses {@link nodeCrypto}.
 *
 * @module
 */

/** The `node:crypto` module. */
export type NodeCrypto = typeof import("node:crypto");

let loaded: NodeCrypto | null = null;

/** Loads `node:crypto` (once) and returns it. */
export async function loadNodeCrypto(): Promise<NodeCrypto> {
  return loaded ??= await import("node:crypto");
}

/** `node:crypto`, which {@link loadNodeCrypto} has loaded (an Error if it has not). */
export function nodeCrypto(): NodeCrypto {
  if (loaded === null) throw new Error("node:crypto used before loadNodeCrypto()");
  return loaded;
}
