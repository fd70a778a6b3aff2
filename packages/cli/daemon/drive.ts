/**
 * `--drive`: our extension of qemu-storage-daemon's command line. The daemon has no guest
 * devices, so nothing would ever own a tray; `--drive id=cd0[,node-name=N][,name=B]
 * [,removable=on|off][,read-only=on|off]` makes a Backend (named `B` when given, else
 * anonymous) with a device model attached under id `cd0` — a drive with a tray when
 * removable (the default) — so QMP's media commands (blockdev-open-tray, eject,
 * blockdev-change-medium, ...) have something to act on, as with QEMU's `-device ide-cd`.
 *
 * @module
 */

import { type Graph, Perm } from "@blockgraph/core";
import { BlockDevice } from "@blockgraph/devices";
import { type ArgsSchema, checkArgs } from "./qmp_args.ts";
import { genericError } from "./qmp_error.ts";

/** The options of `--drive`. */
export const DRIVE_ARGS: ArgsSchema = {
  id: "str",
  "*node-name": "str",
  "*name": "str",
  "*removable": "bool",
  "*read-only": "bool",
};

/** A device model of a drive: a CD-ROM-like drive with a tray, or a fixed disk. */
export class DaemonDrive extends BlockDevice {
  /** Whether the medium is read-only (the device takes no write permission). */
  readonly readOnly: boolean;

  /** Attaches a drive with `id` to `backend`. */
  constructor(
    backend: ConstructorParameters<typeof BlockDevice>[0],
    id: string,
    removable: boolean,
    readOnly: boolean,
  ) {
    super(backend, { id, removable, hasTray: removable });
    this.readOnly = readOnly;
  }

  /**
   * Makes a drive from `--drive` options (key=value strings) on `graph`: the Backend, the
   * device, and the medium `node-name` inserted when given.
   */
  static async create(graph: Graph, options: Record<string, unknown>): Promise<DaemonDrive> {
    const a = checkArgs(options, DRIVE_ARGS, { keyval: true });
    const id = a.id as string;
    const removable = (a.removable as boolean | undefined) ?? true;
    const readOnly = (a["read-only"] as boolean | undefined) ?? removable;
    const nodeName = a["node-name"] as string | undefined;
    const node = nodeName === undefined ? undefined : graph.findNode(nodeName);
    if (nodeName !== undefined && !node) {
      throw genericError(`Cannot find device='' nor node-name='${nodeName}'`);
    }
    const backend = graph.createBackend({
      ...(a.name === undefined ? {} : { name: a.name as string }),
      perm: Perm.CONSISTENT_READ | (readOnly ? 0 : Perm.WRITE),
      shared: Perm.ALL,
    });
    let drive: DaemonDrive | null = null;
    try {
      drive = new DaemonDrive(backend, id, removable, readOnly);
      if (node) await backend.insertRoot(node);
      return drive;
    } catch (e) {
      if (drive) await drive.detach();
      await backend.unref();
      throw e;
    }
  }

  /** Removes the drive: the device detaches and the Backend (and its medium) is dropped. */
  async remove(): Promise<void> {
    const backend = this.backend;
    await this.detach();
    await backend.unref();
  }
}
