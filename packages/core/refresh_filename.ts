/**
 * A node's filename, as QEMU's `bdrv_refresh_filename` makes it: a plain filename when the
 * node can be opened again from one (a file's path, `null-co://`, an NBD URI, or a format
 * over a protocol that has one), else `json:{...}` of the options that decide what the node
 * reads (QEMU's "strong" runtime options, children nested). Also QEMU's `bdrv_dirname`, the
 * directory relative backing file names are taken from.
 *
 * @module
 */

import type { Child } from "./child.ts";
import { BlockError } from "./errors.ts";
import type { Node } from "./node.ts";
import type { OptionValues } from "./options.ts";
import { qemuJson } from "./qemu_json.ts";

/** QEMU's limit on a node's filename (`PATH_MAX`); a longer JSON filename is cut to "...". */
const FILENAME_MAX = 4096;

/** How {@link refreshFilename} works. */
export interface RefreshFilenameOptions {
  /**
   * QEMU's `BDRV_O_NO_IO`, as `qemu-img info` opens images: no I/O will be done, so a
   * backing file other than the one the image names (or none) changes nothing the filename
   * must say.
   */
  readonly noIo?: boolean;
  /** Refresh the children first (default true). */
  readonly children?: boolean;
}

/**
 * Whether the node's backing child is not the one its image names (QEMU's
 * `bdrv_backing_overridden`): a `backing` option, or `backing: null` over an image that
 * names one.
 */
function backingOverridden(node: Node, backing: Child | null): boolean {
  if (backing?.node) return node.autoBackingFile !== backing.node.filename;
  return node.autoBackingFile !== "";
}

/**
 * Copies the node's strong options (`driver`, `filename` and the driver's
 * `strongOptions`) from what it was opened with into `out`; returns whether any beyond
 * `driver` and `filename` was given (QEMU's `append_strong_runtime_options`).
 */
function strongOptions(node: Node, out: OptionValues): boolean {
  const given = node.givenOptions;
  let found = false;
  for (const name of ["driver", "filename", ...(node.driver.strongOptions ?? [])]) {
    let here = false;
    if (name.endsWith(".")) {
      for (const [key, value] of Object.entries(given)) {
        if (!key.startsWith(name)) continue;
        out[key] = value;
        here = true;
      }
    } else if (Object.hasOwn(given, name)) {
      out[name] = given[name];
      here = true;
    }
    if (here && name !== "driver" && name !== "filename") found = true;
  }
  if (!Object.hasOwn(out, "driver")) out.driver = node.driver.name;
  return found;
}

/**
 * Recomputes `node.exactFilename`, `node.fullOpenOptions` and `node.filename` (and, unless
 * told not to, its children's first), following QEMU's `bdrv_refresh_filename`:
 *
 * - the options are the strong ones, then each child's (the backing child's only when it is
 *   not the one the image names);
 * - the exact filename is the driver's own (`exactFilename`), else for a format node the
 *   primary child's when that child is a protocol node with one and neither a strong option
 *   nor an overridden backing file stands in the way, else for a protocol node the filename
 *   it was opened with;
 * - the filename is the exact one, or `json:` and the options in QEMU's JSON.
 */
export function refreshFilename(node: Node, opts: RefreshFilenameOptions = {}): void {
  if (opts.children !== false) {
    for (const c of node.children) if (c.node) refreshFilename(c.node, opts);
  }
  const driver = node.driver;
  const backing = node.backing;
  const overridden = !opts.noIo && backingOverridden(node, backing);
  const full: OptionValues = {};
  const json = strongOptions(node, full) || overridden;
  // QEMU keeps children newest first; the order shows only where keys share a hash bucket.
  for (const c of [...node.children].reverse()) {
    if (c === backing && !overridden) continue;
    full[c.name] = c.node?.fullOpenOptions ?? null;
  }
  if (overridden && !backing) full.backing = null;
  node.fullOpenOptions = full;

  const primary = node.primaryChild?.node ?? null;
  let exact: string;
  if (driver.exactFilename) exact = driver.exactFilename(node, full);
  else if (primary) {
    const usable = primary.exactFilename !== "" && primary.driver.kind === "protocol" &&
      driver.kind !== "filter" && !json;
    exact = usable ? primary.exactFilename : "";
  } else exact = node.exactFilename;
  node.exactFilename = exact;
  if (exact !== "") {
    node.filename = exact;
    return;
  }
  const name = `json:${qemuJson(full)}`;
  node.filename = name.length < FILENAME_MAX ? name : `${name.slice(0, FILENAME_MAX - 4)}...`;
}

/** Whether `path` starts with a protocol (`nbd:`, `json:`): a `:` before any `/`. */
export function pathHasProtocol(path: string): boolean {
  const i = path.search(/[:/]/);
  return i >= 0 && path[i] === ":";
}

/**
 * QEMU's `path_combine`: `filename` taken relative to the directory of `base` (a path, or a
 * protocol filename such as `nbd:...`); an absolute `filename` as it is.
 *
 * @example
 * ```ts
 * import { pathCombine } from "@blockgraph/core";
 * console.assert(pathCombine("sub/a.qcow2", "b.raw") === "sub/b.raw");
 * ```
 */
export function pathCombine(base: string, filename: string): string {
  if (filename.startsWith("/")) return filename;
  const afterProtocol = pathHasProtocol(base) ? base.indexOf(":") + 1 : 0;
  const afterSlash = base.lastIndexOf("/") + 1;
  return base.slice(0, Math.max(afterProtocol, afterSlash)) + filename;
}

/**
 * QEMU's `bdrv_dirname`: the directory of the image `node` presents, with its trailing
 * slash (`""` for the working directory). The driver's answer, else its primary child's,
 * else that of its exact filename; throws "Cannot generate a base directory for X nodes"
 * when there is none.
 */
export function nodeDirname(node: Node): string {
  if (node.driver.dirname) return node.driver.dirname(node);
  const primary = node.primaryChild?.node;
  if (primary) return nodeDirname(primary);
  refreshFilename(node);
  if (node.exactFilename !== "") return pathCombine(node.exactFilename, "");
  throw new BlockError(
    "EINVAL",
    `Cannot generate a base directory for ${node.driver.name} nodes`,
  );
}

/**
 * The backing file name `backing` that `node`'s image stores, made usable from the working
 * directory (QEMU's `bdrv_get_full_backing_filename`): a name with a protocol (`json:`,
 * `nbd://`) or an absolute path as it is, else taken from the image's directory. Throws when
 * the image has no directory (an NBD export).
 */
export function fullBackingFilename(node: Node, backing: string): string {
  if (pathHasProtocol(backing) || backing.startsWith("/")) return backing;
  return nodeDirname(node) + backing;
}
