/**
 * The contract between a Backend and the one device model attached to it.
 *
 * @module
 */

import type { Backend } from "./backend.ts";

/** A function called when a Backend's root is removed or inserted (exports and jobs react). */
export type RootListener = (backend: Backend) => void;

/** What a device model tells its Backend about itself, and the callbacks it receives. */
export interface DeviceOps {
  /** Whether the device's medium can be removed (CD-ROM: yes; disk: no). */
  readonly removable?: boolean;
  /** Whether the device has a tray that can be opened. */
  readonly hasTray?: boolean;
  /** The medium was loaded (`true`) or unloaded / the tray opened (`false`). */
  changeMedia?(loaded: boolean): void;
  /** The user asked to eject while the guest holds the medium locked. */
  ejectRequest?(force: boolean): void;
  /** The medium changed size. */
  resize?(): void;
  /** The Backend entered a drained section: the device should stop submitting. */
  drainedBegin?(): void;
  /** The drained section ended. */
  drainedEnd?(): void;
}
