/**
 * The tray and lock of a drive with removable media, and the QMP media operations built on
 * them (blockdev-open-tray, -close-tray, -remove-medium, -insert-medium, eject,
 * blockdev-change-medium), with QEMU's checks and messages.
 *
 * @module
 */

import type { Backend } from "./backend.ts";
import type { DeviceOps } from "./device_ops.ts";
import { BlockError } from "./errors.ts";
import type { Node } from "./node.ts";

/** What the tray needs to know of its Backend's device. */
export interface TrayHost {
  /** The Backend's monitor name ("" when anonymous). */
  readonly name: string;
  /** The attached device, or null. */
  device(): { id: string; ops: DeviceOps } | null;
  /** Names the drive in messages. */
  describeName(): string;
  /** Emits `DEVICE_TRAY_MOVED`. */
  emit(event: string, data: Record<string, unknown>): void;
}

/** Tray and lock state of one drive. */
export class Tray {
  #open = false;
  #locked = false;
  readonly #host: TrayHost;

  /** Creates a closed, unlocked tray. */
  constructor(host: TrayHost) {
    this.#host = host;
  }

  /** Whether the tray is open. */
  get isOpen(): boolean {
    return this.#open;
  }

  /** Whether the guest has locked the medium. */
  get locked(): boolean {
    return this.#locked;
  }

  /** Whether the medium is removable (with no device attached the drive is freely changeable). */
  get removable(): boolean {
    const d = this.#host.device();
    return d ? d.ops.removable === true : true;
  }

  /** Whether the device has a tray. */
  get hasTray(): boolean {
    return this.#host.device()?.ops.hasTray === true;
  }

  /** The guest locks or unlocks the medium (ATAPI PREVENT ALLOW MEDIUM REMOVAL). */
  lock(locked: boolean): void {
    this.#locked = locked;
  }

  /** Resets the state when the device goes away. */
  reset(): void {
    this.#open = false;
    this.#locked = false;
  }

  /** Moves the tray, emitting DEVICE_TRAY_MOVED when it really moves. */
  move(open: boolean): void {
    if (this.#open === open) return;
    this.#open = open;
    if (open) this.#locked = false;
    this.#host.emit("DEVICE_TRAY_MOVED", {
      device: this.#host.name,
      id: this.#host.device()?.id ?? "",
      "tray-open": open,
    });
  }

  /** Tells the device its medium was loaded or unloaded. */
  mediaChanged(loaded: boolean): void {
    this.#host.device()?.ops.changeMedia?.(loaded);
  }

  #checkTray(): void {
    const name = this.#host.describeName();
    if (!this.removable) throw new BlockError("ENOTSUP", `Device '${name}' is not removable`);
    if (!this.hasTray) throw new BlockError("ENOSYS", `Device '${name}' does not have a tray`);
  }

  /** blockdev-open-tray; a locked medium is asked to eject, and only `force` opens it now. */
  open(force = false): void {
    this.#checkTray();
    if (this.#open) return;
    const locked = this.#locked;
    if (locked) this.#host.device()?.ops.ejectRequest?.(force);
    if (!locked || force) {
      this.move(true);
      this.mediaChanged(false);
    }
    if (locked && !force) {
      throw new BlockError(
        "EINPROGRESS",
        `Device '${this.#host.describeName()}' is locked and force was not specified, ` +
          "wait for tray to open and try again",
      );
    }
  }

  /** blockdev-close-tray. */
  close(): void {
    this.#checkTray();
    if (!this.#open) return;
    this.move(false);
    this.mediaChanged(true);
  }

  /** Checks that the medium may be changed now: removable, and the tray open if it has one. */
  checkChangeable(): void {
    const name = this.#host.describeName();
    if (!this.#host.device()) return;
    if (!this.removable) throw new BlockError("ENOTSUP", `Device '${name}' is not removable`);
    if (this.hasTray && !this.#open) {
      throw new BlockError("EINVAL", `Tray of device '${name}' is not open`);
    }
  }
}

function tolerateNoTray(fn: () => void): void {
  try {
    fn();
  } catch (e) {
    if (!(e instanceof BlockError) || e.code !== "ENOSYS") throw e;
  }
}

/** blockdev-remove-medium: the tray must be open (for devices with one). */
export async function removeMedium(b: Backend): Promise<void> {
  b.tray.checkChangeable();
  if (!b.root) return;
  await b.removeRoot();
  if (!b.tray.hasTray) b.tray.mediaChanged(false);
}

/** blockdev-insert-medium: the tray must be open and the drive empty. */
export async function insertMedium(b: Backend, node: Node): Promise<void> {
  if (node.parents.some((c) => c.parent.parentKind === "backend")) {
    throw new BlockError("EBUSY", `Node '${node.name}' is already in use`);
  }
  b.tray.checkChangeable();
  if (b.root) {
    throw new BlockError("EBUSY", `There already is a medium in device '${b.describeName()}'`);
  }
  await b.insertRoot(node);
  if (!b.tray.hasTray) b.tray.mediaChanged(true);
}

/** eject: open the tray (forcing past a lock if asked) and remove the medium. */
export async function eject(b: Backend, force: boolean): Promise<void> {
  tolerateNoTray(() => b.tray.open(force));
  await removeMedium(b);
}

/** blockdev-change-medium with an opened node: open the tray, swap the medium, close it. */
export async function changeMedium(b: Backend, node: Node, force: boolean): Promise<void> {
  tolerateNoTray(() => b.tray.open(force));
  await removeMedium(b);
  await insertMedium(b, node);
  tolerateNoTray(() => b.tray.close());
}
