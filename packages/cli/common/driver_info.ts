/**
 * What QEMU's `bdrv_get_info` answers for a node, and how QEMU prints a format's specific
 * information (`bdrv_image_info_specific_dump`): shared by `img info` (its `dirty-flag`
 * shows only where `bdrv_get_info` answers) and `io`'s `info` command.
 *
 * @module
 */

import { type Node, qdictKeys } from "@blockgraph/core";
import { Qcow2Instance } from "@blockgraph/drivers";

/** QEMU's `BlockDriverInfo`, the fields we show. */
export interface DriverInfo {
  /** The cluster size (0: none). */
  readonly clusterSize: number;
  /** Where the VM state of internal snapshots starts (0: none). */
  readonly vmStateOffset: number;
}

/**
 * What QEMU's `bdrv_get_info` answers for `node`, or `null` where it has nothing: qcow2 its
 * cluster size and its VM state offset (the guest size rounded up to what one L1 entry
 * maps); the `file` protocol zeros; raw and filters ask the child whose data they present;
 * nbd, null-co and our memory protocol have none.
 */
export function driverInfo(node: Node): DriverInfo | null {
  for (let n: Node | null = node; n; n = n.primaryChild?.node ?? null) {
    const inst = n.instance;
    if (inst instanceof Qcow2Instance) {
      return { clusterSize: inst.clusterSize, vmStateOffset: inst.vmStateOffset };
    }
    if (n.driver.name === "file") return { clusterSize: 0, vmStateOffset: 0 };
    if (n.driver.name !== "raw" && n.driver.kind !== "filter") return null;
  }
  return null;
}

/**
 * QEMU's `dump_qdict` of format-specific data: keys with spaces for dashes, dicts in QEMU's
 * hash order, lists as `[i]:`, each level indented four more than `indent`.
 */
export function dumpFormatSpecific(data: Record<string, unknown>, indent: number): string {
  let out = "";
  const list = Array.isArray(data);
  const keys = list ? Object.keys(data) : qdictKeys(Object.keys(data));
  for (const k of keys) {
    const v = data[k];
    const key = list ? `[${k}]` : k.replaceAll("-", " ");
    if (v !== null && typeof v === "object") {
      out += `${" ".repeat(indent)}${key}:\n` +
        dumpFormatSpecific(v as Record<string, unknown>, indent + 4);
    } else out += `${" ".repeat(indent)}${key}: ${String(v)}\n`;
  }
  return out;
}
