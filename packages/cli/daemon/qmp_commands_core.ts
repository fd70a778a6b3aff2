/**
 * The monitor's own commands: `qmp_capabilities`, `query-commands`, `query-version`, `quit`.
 *
 * @module
 */

import { PACKAGE_STRING, QEMU_COMPAT } from "../common/version.ts";
import type { QmpCommand } from "./daemon.ts";

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

/**
 * Capabilities the monitor offers in its greeting: `oob`, as qemu-storage-daemon offers it.
 * A client may enable it and send `exec-oob`; no command runs out of band (none of
 * qemu-storage-daemon 7.2's does either), so each answers that it does not support OOB.
 */
export const QMP_CAPABILITIES: readonly string[] = ["oob"];

/** The core commands. */
export const coreCommands: readonly QmpCommand[] = [
  {
    // The session runs it only during negotiation; afterwards it answers CommandNotFound.
    name: "qmp_capabilities",
    args: { "*enable": { list: ["oob"] } },
    run() {
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
