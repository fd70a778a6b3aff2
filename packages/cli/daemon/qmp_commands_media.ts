/**
 * Media commands, with QEMU's checks in QEMU's order and words (block/qapi-sysemu.c):
 * `blockdev-open-tray`, `blockdev-close-tray`, `blockdev-remove-medium`,
 * `blockdev-insert-medium`, `blockdev-change-medium`, `eject`. `device` names a Backend,
 * `id` a device (a `--drive`).
 *
 * @module
 */

import { type Backend, BlockError, type Node, Perm } from "@blockgraph/core";
import { DEFAULT_CACHE, openImage } from "../common/open_image.ts";
import type { Daemon, QmpCommand } from "./daemon.ts";
import { genericError } from "./qmp_error.ts";

interface Target {
  backend: Backend;
  /** The name the user gave (`device ?: id` in QEMU's messages). */
  name: string;
}

function target(daemon: Daemon, args: Record<string, unknown>): Target {
  const device = args.device as string | undefined;
  const id = args.id as string | undefined;
  return { backend: daemon.findDrive(device, id), name: id ?? device ?? "" };
}

/** Whether a device is attached (a Backend without one may change media freely). */
function hasDevice(b: Backend): boolean {
  return b.deviceId !== "";
}

/**
 * QEMU's do_open_tray: "ENOSYS" for a drive without a tray and "EINPROGRESS" when the guest
 * was asked to open a locked tray are returned, not thrown; the caller decides.
 */
function openTray(t: Target, force: boolean): "ok" | "ENOSYS" | "EINPROGRESS" {
  const b = t.backend;
  if (!b.tray.removable) throw genericError(`Device '${t.name}' is not removable`);
  if (!b.tray.hasTray) return "ENOSYS";
  if (b.tray.isOpen) return "ok";
  try {
    b.tray.open(force);
  } catch (e) {
    if (e instanceof BlockError && e.code === "EINPROGRESS") {
      throw genericError(
        `Device '${t.name}' is locked and force was not specified, ` +
          "wait for tray to open and try again",
      );
    }
    throw e;
  }
  return "ok";
}

function closeTray(t: Target): void {
  const b = t.backend;
  if (!b.tray.removable) throw genericError(`Device '${t.name}' is not removable`);
  if (!b.tray.hasTray || !b.tray.isOpen) return;
  b.tray.close();
}

async function removeMedium(t: Target): Promise<void> {
  const b = t.backend;
  if (hasDevice(b) && !b.tray.removable) throw genericError(`Device '${t.name}' is not removable`);
  if (hasDevice(b) && b.tray.hasTray && !b.tray.isOpen) {
    throw genericError(`Tray of device '${t.name}' is not open`);
  }
  if (!b.node) return;
  await b.removeMedium();
}

async function insertAnonMedium(b: Backend, node: Node): Promise<void> {
  if (hasDevice(b) && !b.tray.removable) throw genericError("Device is not removable");
  if (hasDevice(b) && b.tray.hasTray && !b.tray.isOpen) {
    throw genericError("Tray of the device is not open");
  }
  if (b.node) throw genericError("There already is a medium in the device");
  await b.insertMedium(node);
}

function isLockedRefusal(e: unknown): boolean {
  return e instanceof Error && e.message.includes("is locked and force was not specified");
}

/** Opens the image blockdev-change-medium names, with the drive's read-only mode. */
async function openMedium(
  daemon: Daemon,
  t: Target,
  filename: string,
  format: string | undefined,
  mode: string,
): Promise<Node> {
  const b = t.backend;
  const current = b.node ? b.node.flags.readOnly : !(b.perm & Perm.WRITE);
  const readOnly = mode === "retain" ? current : mode === "read-only";
  let image;
  try {
    image = await openImage(daemon.graph, {
      filename,
      format,
      readOnly,
      cache: { ...DEFAULT_CACHE, writethrough: false },
      discard: "ignore",
    }, () => {});
  } catch (e) {
    // A lock held elsewhere is reported as it is, as QEMU reports it.
    const msg = BlockError.from(e).message;
    throw genericError(
      msg.startsWith("Could not open") || /^Failed to get (shared )?"\w+" lock/.test(msg)
        ? msg
        : `Could not open '${filename}': ${msg}`,
    );
  }
  const node = image.node;
  node.ref("blockdev-change-medium");
  await image.backend.unref();
  return node;
}

/** The media commands. */
export const mediaCommands: readonly QmpCommand[] = [
  {
    name: "blockdev-open-tray",
    args: { "*device": "str", "*id": "str", "*force": "bool" },
    run(args, { daemon }) {
      try {
        openTray(target(daemon, args), (args.force as boolean | undefined) ?? false);
      } catch (e) {
        // QEMU reports success when the guest was asked to open a locked tray.
        if (!isLockedRefusal(e)) throw e;
      }
      return {};
    },
  },
  {
    name: "blockdev-close-tray",
    args: { "*device": "str", "*id": "str" },
    run(args, { daemon }) {
      closeTray(target(daemon, args));
      return {};
    },
  },
  {
    name: "blockdev-remove-medium",
    args: { id: "str" },
    async run(args, { daemon }) {
      await removeMedium(target(daemon, { id: args.id }));
      return {};
    },
  },
  {
    name: "blockdev-insert-medium",
    args: { id: "str", "node-name": "str" },
    async run(args, { daemon }) {
      const t = target(daemon, { id: args.id });
      const name = args["node-name"] as string;
      const node = daemon.graph.findNode(name);
      if (!node) throw genericError(`Node '${name}' not found`);
      if (node.parents.some((c) => c.parent.parentKind === "backend")) {
        throw genericError(`Node '${name}' is already in use`);
      }
      await insertAnonMedium(t.backend, node);
      return {};
    },
  },
  {
    name: "eject",
    args: { "*device": "str", "*id": "str", "*force": "bool" },
    async run(args, { daemon }) {
      const t = target(daemon, args);
      openTray(t, (args.force as boolean | undefined) ?? false);
      await removeMedium(t);
      return {};
    },
  },
  {
    name: "blockdev-change-medium",
    args: {
      "*device": "str",
      "*id": "str",
      filename: "str",
      "*format": "str",
      "*force": "bool",
      "*read-only-mode": ["retain", "read-only", "read-write"],
    },
    async run(args, { daemon }) {
      const t = target(daemon, args);
      const node = await openMedium(
        daemon,
        t,
        args.filename as string,
        args.format as string | undefined,
        (args["read-only-mode"] as string | undefined) ?? "retain",
      );
      try {
        openTray(t, (args.force as boolean | undefined) ?? false);
        await removeMedium(t);
        await insertAnonMedium(t.backend, node);
        closeTray(t);
      } finally {
        await node.unref("blockdev-change-medium");
      }
      return {};
    },
  },
];
