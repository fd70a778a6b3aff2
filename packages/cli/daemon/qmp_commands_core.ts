/**
 * The monitor's own commands: `qmp_capabilities`, `query-commands`, `query-version`, `quit`.
 *
 * @module
 */

import cliPackage from "../deno.json" with { type: "json" };
import type { QmpCommand } from "./daemon.ts";
import { genericError } from "./qmp_error.ts";

/** QEMU's VersionInfo for blockgraph's own version (the cli package's). */
export function versionInfo(): {
  qemu: { micro: number; minor: number; major: number };
  package: string;
} {
  const [major = 0, minor = 0, micro = 0] = cliPackage.version.split(/[.-]/).map((p) =>
    Number.parseInt(p, 10) || 0
  );
  return { qemu: { micro, minor, major }, package: `blockgraph ${cliPackage.version}` };
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
