/**
 * What the `blockgraph` tools say of their version. Each speaks a QEMU tool's command line (or
 * QMP) as QEMU 7.2 does, and says so the way QEMU does, so that scripts and management tools
 * that read `qemu-img --version` or QMP's `query-version` to decide what they may use (libvirt,
 * OpenStack's image tools) see the QEMU release whose behaviour they get; blockgraph's own
 * version is where QEMU puts a distributor's package string.
 *
 * @module
 */

import cliPackage from "../deno.json" with { type: "json" };

/** The QEMU release whose command lines, output and QMP blockgraph follows. */
export const QEMU_COMPAT = { major: 7, minor: 2, micro: 0 } as const;

/** blockgraph's own version (the cli package's). */
export const BLOCKGRAPH_VERSION: string = cliPackage.version;

/** The package string: `blockgraph 0.1.0`. */
export const PACKAGE_STRING = `blockgraph ${BLOCKGRAPH_VERSION}`;

/**
 * The `--version` text of the tool that speaks `qemuTool`'s language, in QEMU's shape:
 * `qemu-img version 7.2.0 (blockgraph 0.1.0)` and a copyright line.
 */
export function versionText(qemuTool: string): string {
  const { major, minor, micro } = QEMU_COMPAT;
  return `${qemuTool} version ${major}.${minor}.${micro} (${PACKAGE_STRING})\n` +
    "Copyright (c) 2026 the blockgraph developers\n";
}
