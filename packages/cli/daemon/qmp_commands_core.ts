/**
 * The monitor's own commands: `qmp_capabilities`, `query-commands`, `query-version`, `quit`.
 *
 * @module
 */

import { PACKAGE_STRING, QEMU_COMPAT } from "../common/version.ts";
import type { QmpCommand } from "./daemon.ts";
import { genericError } from "./qmp_error.ts";

/**
 * QEMU's VersionInfo: the QEMU release whose QMP the monitor speaks, and blockgraph's version
 * as the package string (see `common/version.ts`).
 */
export function versionInfo(): {
  qemu: { micro: number; minor: number; major: number };
  package: string;
} {
  const { major, minor, micro } = QEMU_COMPAT;
  return { qemu: { micro, minor, major }, package: PACKAGE_STRING };
}

/** Capabilities the monitor offers in its greeting (none: no out-of-band execution). */
export const QMP_CAPABILITIES: readonly string[] = [];

/** The core commands. */
export const coreCommands: readonly QmpCommand[] = [
  {
    // The session runs it only during negotiation; afterwards it answers CommandNotFound.
    name: "qmp_capabilities",
    args: { "*enable": { list: "any" } },
    run(args) {
      for (const cap of (args.enable as unknown[] | undefined) ?? []) {
        if (cap !== "oob") throw genericError(`Parameter 'enable' does not accept value '${cap}'`);
        throw genericError("Capability 'oob' not available");
      }
      return {};
    },
  },
  {
    name: "query-commands",
    args: {},
    run(_args, { daemon }) {
      return [...daemon.commands.keys()].map((name) => ({ name }));
    },
  },
  {
    name: "query-version",
    args: {},
    run: () => versionInfo(),
  },
  {
    name: "quit",
    args: {},
    run(_args, { daemon }) {
      daemon.requestQuit();
      return {};
    },
  },
];
