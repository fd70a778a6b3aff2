/**
 * The runtime options of a qcow2 node, QEMU 7.2's `BlockdevOptionsQcow2` read as its
 * `qcow2_update_options_prepare` reads them (at open and at every reopen), with its checks in
 * its order and its messages: the cache sizes (`cache-size`, `l2-cache-size`,
 * `l2-cache-entry-size`, `refcount-cache-size`), `cache-clean-interval`, `lazy-refcounts`,
 * the overlap checks (`overlap-check`, as a template name or `overlap-check.template` and a
 * switch per structure) and the `pass-discard-*` switches.
 *
 * Where QEMU and blockgraph differ: with no cache size given, the L2 cache covers the whole
 * image up to 1 TiB and the refcount cache the file up to 1 TiB (QEMU: 32 MiB of L2 tables,
 * four refcount blocks); the L2 cache holds whole tables, never parts of one, so
 * `l2-cache-entry-size` is checked but the cache's memory is the size given in whole tables
 * (at least two).
 *
 * @module
 */

import { BlockError, type OptionSchema, type OptionValues } from "@blockgraph/core";
import { COMPAT_LAZY_REFCOUNTS, Incompat } from "./format.ts";
import type { Qcow2Header } from "./header.ts";

/** QEMU's overlap check bits (`QCOW2_OL_*`), one per metadata structure. */
export const Overlap = {
  MAIN_HEADER: 1 << 0,
  ACTIVE_L1: 1 << 1,
  ACTIVE_L2: 1 << 2,
  REFCOUNT_TABLE: 1 << 3,
  REFCOUNT_BLOCK: 1 << 4,
  SNAPSHOT_TABLE: 1 << 5,
  INACTIVE_L1: 1 << 6,
  INACTIVE_L2: 1 << 7,
  BITMAP_DIRECTORY: 1 << 8,
} as const;

const CONSTANT = Overlap.MAIN_HEADER | Overlap.ACTIVE_L1 | Overlap.REFCOUNT_TABLE |
  Overlap.SNAPSHOT_TABLE | Overlap.INACTIVE_L1 | Overlap.BITMAP_DIRECTORY;
const CACHED = CONSTANT | Overlap.ACTIVE_L2 | Overlap.REFCOUNT_BLOCK;

/** The templates `overlap-check` names, as bit masks. */
const TEMPLATES: Readonly<Record<string, number>> = {
  none: 0,
  constant: CONSTANT,
  cached: CACHED,
  all: CACHED | Overlap.INACTIVE_L2,
};

/** The per-structure switches under `overlap-check.`, with their bits, in QEMU's order. */
const OVERLAP_SWITCHES: readonly [string, number, string][] = [
  ["main-header", Overlap.MAIN_HEADER, "the main qcow2 header"],
  ["active-l1", Overlap.ACTIVE_L1, "the active L1 table"],
  ["active-l2", Overlap.ACTIVE_L2, "an active L2 table"],
  ["refcount-table", Overlap.REFCOUNT_TABLE, "the refcount table"],
  ["refcount-block", Overlap.REFCOUNT_BLOCK, "a refcount block"],
  ["snapshot-table", Overlap.SNAPSHOT_TABLE, "the snapshot table"],
  ["inactive-l1", Overlap.INACTIVE_L1, "an inactive L1 table"],
  ["inactive-l2", Overlap.INACTIVE_L2, "an inactive L2 table"],
  ["bitmap-directory", Overlap.BITMAP_DIRECTORY, "the bitmap directory"],
];

/**
 * Why a cluster is freed, QEMU's `qcow2_discard_type`: whether its clusters are discarded in
 * the image file follows the node's `pass-discard-*` option for the kind (`never` and
 * `always` are fixed).
 */
export type DiscardType = "never" | "always" | "request" | "snapshot" | "other";

/** QEMU's default cache clean interval on Linux, in seconds. */
export const DEFAULT_CACHE_CLEAN_INTERVAL = 600;

/** The L2 cache covers at most this much guest data by default (1 TiB). */
const DEFAULT_L2_COVERAGE = 2 ** 40;
/** QEMU's minimum cache sizes, in entries. */
const MIN_L2_CACHE = 2;
const MIN_REFCOUNT_CACHE = 4;
const INT_MAX = 2 ** 31 - 1;
const UINT_MAX = 2 ** 32 - 1;

const TEMPLATE_HELP = "Selects which overlap checks to perform from a range of templates " +
  "(none, constant, cached, all)";

/** The qcow2 driver's runtime options (QEMU's `qcow2_runtime_opts`), and ours. */
export const QCOW2_RUNTIME_OPTIONS: OptionSchema = {
  "lazy-refcounts": {
    type: "bool",
    description: "Postpone refcount updates (default: the image's lazy_refcounts)",
  },
  "pass-discard-request": {
    type: "bool",
    description: "Pass guest discard requests to the layer below (default: discard=unmap)",
  },
  "pass-discard-snapshot": {
    type: "bool",
    description: "Generate discard requests when snapshot related space is freed (default on)",
  },
  "pass-discard-other": {
    type: "bool",
    description: "Generate discard requests when other clusters are freed (default off)",
  },
  "overlap-check": { type: "string", description: TEMPLATE_HELP + " (default: cached)" },
  "overlap-check.template": { type: "string", description: TEMPLATE_HELP },
  ...Object.fromEntries(
    OVERLAP_SWITCHES.map(([name, , what]) => [
      `overlap-check.${name}`,
      { type: "bool", description: `Check for unintended writes into ${what}` },
    ]),
  ),
  "cache-size": {
    type: "size",
    description: "Maximum combined metadata (L2 tables and refcount blocks) cache size",
  },
  "l2-cache-size": {
    type: "size",
    description: "Maximum L2 table cache size (default: enough for the whole image, up to 1 TiB)",
  },
  "l2-cache-entry-size": {
    type: "size",
    description: "Size of each entry in the L2 cache (checked as QEMU does; the cache holds " +
      "whole L2 tables whatever it is)",
  },
  "refcount-cache-size": {
    type: "size",
    description: "Maximum refcount block cache size (default: enough for the file, up to 1 TiB)",
  },
  "cache-clean-interval": {
    type: "int",
    description: "Clean unused cache entries after this time (in seconds; 0: never; " +
      "default 600)",
  },
  "encrypt.format": {
    type: "string",
    description: "The image's encryption format (aes, luks), checked against its header",
  },
  "encrypt.key-secret": {
    type: "string",
    description: "ID of the secret that unlocks an encrypted image (its password)",
  },
};

/** The runtime options `readRuntimeOptions` read. */
export interface Qcow2RuntimeOptions {
  /** How many L2 tables the cache holds. */
  l2CacheTables: number;
  /** How many refcount blocks the cache holds. */
  refcountCacheBlocks: number;
  /** Seconds between cache cleanings (0: none). */
  cacheCleanInterval: number;
  /** Whether refcount updates are deferred behind the dirty bit (QEMU's use_lazy_refcounts). */
  lazyRefcounts: boolean;
  /** The overlap checks, a mask of {@link Overlap} bits. */
  overlapCheck: number;
  /** Whether clusters freed for each reason are discarded in the image file. */
  passDiscard: Record<DiscardType, boolean>;
}

function invalid(message: string): BlockError {
  return new BlockError("EINVAL", message);
}

function sizeOption(options: OptionValues, key: string): number | undefined {
  return options[key] as number | undefined;
}

/** Whether `n` is a power of two. */
function powerOfTwo(n: number): boolean {
  return n > 0 && Number.isInteger(Math.log2(n));
}

/**
 * Reads the runtime options of an image with header `h` over a file of `fileLength` bytes;
 * `unmap` is the node's `discard=unmap` (the default of `pass-discard-request`). Throws
 * QEMU's errors (EINVAL) in QEMU's order.
 */
export function readRuntimeOptions(
  options: OptionValues,
  h: Qcow2Header,
  fileLength: number,
  unmap: boolean,
): Qcow2RuntimeOptions {
  const cs = 2 ** h.clusterBits;
  const extL2 = (h.incompatible & BigInt(Incompat.EXTL2)) !== 0n;
  const entryBytes = extL2 ? 16 : 8;
  // QEMU's read_cache_sizes: the L2 cache that covers the whole disk, in whole clusters.
  const maxL2Cache = Math.ceil((Math.ceil(h.size / cs) * entryBytes) / cs) * cs;
  const minRefcountCache = MIN_REFCOUNT_CACHE * cs;
  const combined = sizeOption(options, "cache-size");
  const l2Setting = sizeOption(options, "l2-cache-size");
  const rcSetting = sizeOption(options, "refcount-cache-size");
  const entrySetting = sizeOption(options, "l2-cache-entry-size");
  let l2 = l2Setting === undefined ? undefined : Math.min(maxL2Cache, l2Setting);
  let rc = rcSetting;
  if (combined !== undefined) {
    if (l2Setting !== undefined && rcSetting !== undefined) {
      throw invalid(
        "cache-size, l2-cache-size and refcount-cache-size may not be set at the same time",
      );
    } else if (l2Setting !== undefined && l2Setting > combined) {
      throw invalid("l2-cache-size may not exceed cache-size");
    } else if ((rcSetting ?? 0) > combined) {
      throw invalid("refcount-cache-size may not exceed cache-size");
    }
    if (l2 !== undefined) rc = combined - l2;
    else if (rc !== undefined) l2 = combined - rc;
    else if (combined >= maxL2Cache + minRefcountCache) {
      // As much as the whole disk needs for L2 tables, the rest for refcount blocks.
      l2 = maxL2Cache;
      rc = combined - l2;
    } else {
      rc = Math.min(combined, minRefcountCache);
      l2 = combined - rc;
    }
  }
  let entrySize = entrySetting ?? cs;
  if (l2 !== undefined && l2 < maxL2Cache && entrySetting === undefined) {
    entrySize = Math.min(cs, 4096);
  }
  if (entrySize < 512 || entrySize > cs || !powerOfTwo(entrySize)) {
    throw invalid(
      `L2 cache entry size must be a power of two between 512 and the cluster size (${cs})`,
    );
  }
  if (l2 !== undefined && Math.floor(l2 / entrySize) > INT_MAX) {
    throw invalid("L2 cache size too big");
  }
  if (rc !== undefined && Math.floor(rc / cs) > INT_MAX) {
    throw invalid("Refcount cache size too big");
  }
  const interval = (options["cache-clean-interval"] as number | undefined) ??
    DEFAULT_CACHE_CLEAN_INTERVAL;
  // QEMU reads the number unsigned: -1 is 2^64 - 1.
  if (interval < 0 || interval > UINT_MAX) throw invalid("Cache clean interval too big");
  const headerLazy = (h.compatible & BigInt(COMPAT_LAZY_REFCOUNTS)) !== 0n;
  const lazy = (options["lazy-refcounts"] as boolean | undefined) ?? headerLazy;
  if (lazy && h.version < 3) {
    throw invalid(
      "Lazy refcounts require a qcow2 image with at least qemu 1.1 compatibility level",
    );
  }
  return {
    // Whole tables: the memory the size gives (QEMU's entries of l2-cache-entry-size bytes).
    l2CacheTables: l2 === undefined
      ? defaultL2Tables(h, cs, entryBytes)
      : Math.max(MIN_L2_CACHE, Math.floor(l2 / cs)),
    refcountCacheBlocks: rc === undefined
      ? defaultRefcountBlocks(h, cs, fileLength)
      : Math.max(MIN_REFCOUNT_CACHE, Math.floor(rc / cs)),
    cacheCleanInterval: interval,
    lazyRefcounts: lazy,
    overlapCheck: readOverlapCheck(options),
    passDiscard: {
      never: false,
      always: true,
      request: (options["pass-discard-request"] as boolean | undefined) ?? unmap,
      snapshot: (options["pass-discard-snapshot"] as boolean | undefined) ?? true,
      other: (options["pass-discard-other"] as boolean | undefined) ?? false,
    },
  };
}

/** The overlap checks: a template, then each structure's own switch over it. */
function readOverlapCheck(options: OptionValues): number {
  const mode = options["overlap-check"] as string | undefined;
  const template = options["overlap-check.template"] as string | undefined;
  if (mode !== undefined && template !== undefined && mode !== template) {
    throw invalid(
      `Conflicting values for qcow2 options 'overlap-check' ('${mode}') and ` +
        `'overlap-check.template' ('${template}')`,
    );
  }
  const name = mode ?? template ?? "cached";
  const bits = Object.hasOwn(TEMPLATES, name) ? TEMPLATES[name]! : undefined;
  if (bits === undefined) {
    throw invalid(
      `Unsupported value '${name}' for qcow2 option 'overlap-check'. Allowed are any of the ` +
        "following: none, constant, cached, all",
    );
  }
  let mask = 0;
  for (const [key, bit] of OVERLAP_SWITCHES) {
    const on = options[`overlap-check.${key}`] as boolean | undefined;
    if (on ?? (bits & bit) !== 0) mask |= bit;
  }
  return mask;
}

/** The L2 tables for the whole image, up to 1 TiB of it (at least two). */
function defaultL2Tables(h: Qcow2Header, cs: number, entryBytes: number): number {
  const perTable = cs * (cs / entryBytes);
  return Math.max(MIN_L2_CACHE, Math.min(h.l1Size, Math.ceil(DEFAULT_L2_COVERAGE / perTable)));
}

/** The refcount blocks for the file, or for 1 TiB when the file is smaller (at least four). */
function defaultRefcountBlocks(h: Qcow2Header, cs: number, fileLength: number): number {
  const perBlock = cs * ((cs * 8) / 2 ** h.refcountOrder);
  return Math.max(
    MIN_REFCOUNT_CACHE,
    Math.ceil(Math.max(fileLength, DEFAULT_L2_COVERAGE) / perBlock),
  );
}
