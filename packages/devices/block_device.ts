/**
 * The part every device model shares: holding exactly one Backend, registering the media
 * callbacks, and turning media events into the guest-visible state a device reports (a
 * pending "medium changed" attention, a pending eject request, a size change).
 *
 * Device models (virtio-blk, IDE/ATAPI) extend {@link BlockDevice}; the block layer only ever
 * talks to them through these callbacks.
 *
 * @module
 */

import type { Backend, DeviceOps } from "@blockgraph/core";

/** What a device model declares about its medium. */
export interface BlockDeviceOptions {
  /** The device id (`ide1-cd0`, `virtio-disk0`), used in events and messages. */
  id: string;
  /** Whether the medium can be removed (CD-ROM) or not (disk). */
  removable: boolean;
  /** Whether the device has a tray the user and the guest can open. */
  hasTray?: boolean;
}

/** Media events a device has seen and the guest has not been told about yet. */
export interface PendingMediaEvents {
  /** The medium was removed or replaced: a CD-ROM reports UNIT ATTENTION once. */
  mediumChanged: boolean;
  /** The user asked for the medium while the guest held it locked. */
  ejectRequested: boolean;
  /** The medium's size changed: virtio-blk raises a config interrupt. */
  resized: boolean;
}

/**
 * Base class of device models: attaches to a Backend as its one device, receives media
 * callbacks, and keeps the events the guest still has to learn about.
 *
 * @example
 * ```ts ignore
 * class Disk extends BlockDevice {
 *   constructor(backend: Backend) {
 *     super(backend, { id: "virtio-disk0", removable: false });
 *   }
 * }
 * ```
 */
export class BlockDevice {
  /** The Backend this device consumes. */
  readonly backend: Backend;
  /** The device id. */
  readonly id: string;
  readonly #pending: PendingMediaEvents = {
    mediumChanged: false,
    ejectRequested: false,
    resized: false,
  };
  #attached = false;

  /** Attaches the device to `backend`; throws EBUSY when another device holds it. */
  constructor(backend: Backend, options: BlockDeviceOptions) {
    this.backend = backend;
    this.id = options.id;
    const ops: DeviceOps = {
      removable: options.removable,
      hasTray: options.hasTray ?? options.removable,
      changeMedia: (loaded) => {
        this.#pending.mediumChanged = true;
        this.mediaChanged(loaded);
      },
      ejectRequest: (force) => {
        this.#pending.ejectRequested = true;
        this.ejectRequested(force);
      },
      resize: () => {
        this.#pending.resized = true;
        this.resized();
      },
      drainedBegin: () => this.drainedBegin(),
      drainedEnd: () => this.drainedEnd(),
    };
    backend.attachDevice(options.id, ops);
    this.#attached = true;
  }

  /** Whether the device is still attached to its Backend. */
  get attached(): boolean {
    return this.#attached;
  }

  /** Whether a medium is present and readable (inserted and the tray closed). */
  get mediumPresent(): boolean {
    return this.backend.isAvailable;
  }

  /**
   * Returns the pending media events and clears them, as a guest's status query consumes
   * them (TEST UNIT READY, GET EVENT STATUS NOTIFICATION, a config read).
   */
  takePendingEvents(): PendingMediaEvents {
    const p = { ...this.#pending };
    this.#pending.mediumChanged = false;
    this.#pending.ejectRequested = false;
    this.#pending.resized = false;
    return p;
  }

  /** Looks at the pending events without clearing them. */
  peekPendingEvents(): Readonly<PendingMediaEvents> {
    return { ...this.#pending };
  }

  /** Detaches from the Backend (device unplug), dropping the device's reference. */
  async detach(): Promise<void> {
    if (!this.#attached) return;
    this.#attached = false;
    await this.backend.detachDevice();
  }

  /** Called when the medium was loaded or unloaded; models override to update registers. */
  protected mediaChanged(_loaded: boolean): void {}

  /** Called when the user asked to eject a locked medium. */
  protected ejectRequested(_force: boolean): void {}

  /** Called when the medium's size changed. */
  protected resized(): void {}

  /** Called when the Backend enters a drained section: stop taking requests from the guest. */
  protected drainedBegin(): void {}

  /** Called when the drained section ends. */
  protected drainedEnd(): void {}
}
