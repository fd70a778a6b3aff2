/**
 * A node's VM state area, QEMU's `bdrv_load_vmstate`/`bdrv_save_vmstate`: where `savevm`
 * keeps a snapshot's RAM and device state, and what qemu-io's `read -b`/`write -b` reach. A
 * driver with such an area (qcow2: after the virtual disk) answers; raw and filters pass the
 * request to the child whose data they present; anything else fails with ENOTSUP.
 *
 * @module
 */

import type { Backend } from "./backend.ts";
import { BlockError } from "./errors.ts";
import { IoVector } from "./io_vector.ts";
import type { Node } from "./node.ts";

/** The node along `node`'s primary children whose driver has a VM state area. */
function vmStateNode(node: Node, load: boolean): Node {
  for (let n: Node | null = node; n; n = n.primaryChild?.node ?? null) {
    const inst = n.instance;
    if (!inst) throw new BlockError("ENOMEDIUM", `Node '${n.name}' is closed`);
    if (load ? inst.loadVmState : inst.saveVmState) return n;
    if (n.driver.name !== "raw" && n.driver.kind !== "filter") break;
  }
  throw new BlockError("ENOTSUP");
}

async function counted(node: Node, fn: () => Promise<void>): Promise<void> {
  node.inFlight++;
  try {
    await fn();
  } finally {
    if (--node.inFlight === 0) node.graph.notifyIdle();
  }
}

function request(
  load: boolean,
  node: Node,
  pos: number,
  bytes: number,
  qiov: IoVector,
  qiovOffset: number,
): Promise<void> {
  try {
    const n = vmStateNode(node, load);
    const inst = n.instance!;
    return counted(
      n,
      () =>
        load
          ? inst.loadVmState!(pos, bytes, qiov, qiovOffset)
          : inst.saveVmState!(pos, bytes, qiov, qiovOffset),
    );
  } catch (e) {
    return Promise.reject(e);
  }
}

/** Reads `bytes` bytes of `node`'s VM state at `pos` into `qiov` at `qiovOffset`. */
export function loadVmState(
  node: Node,
  pos: number,
  bytes: number,
  qiov: IoVector,
  qiovOffset: number,
): Promise<void> {
  return request(true, node, pos, bytes, qiov, qiovOffset);
}

/** Writes `bytes` bytes from `qiov` at `qiovOffset` into `node`'s VM state at `pos`. */
export function saveVmState(
  node: Node,
  pos: number,
  bytes: number,
  qiov: IoVector,
  qiovOffset: number,
): Promise<void> {
  return request(false, node, pos, bytes, qiov, qiovOffset);
}

/** The medium's root node, or ENOMEDIUM when the drive has none. */
function medium(blk: Backend): Node {
  if (!blk.isAvailable) throw new BlockError("ENOMEDIUM", "No medium found", { node: blk.name });
  return blk.root!.node!;
}

/**
 * Reads `buf.length` bytes of `blk`'s medium's VM state at `pos` (QEMU's `blk_load_vmstate`):
 * ENOMEDIUM without a medium, ENOTSUP where the format has no area.
 */
export async function backendLoadVmState(
  blk: Backend,
  pos: number,
  buf: Uint8Array,
): Promise<void> {
  await loadVmState(medium(blk), pos, buf.length, IoVector.of(buf), 0);
}

/**
 * Writes `buf` into `blk`'s medium's VM state at `pos` (QEMU's `blk_save_vmstate`), flushed
 * when the write cache is off.
 */
export async function backendSaveVmState(
  blk: Backend,
  pos: number,
  buf: Uint8Array,
): Promise<void> {
  const node = medium(blk);
  await saveVmState(node, pos, buf.length, IoVector.of(buf), 0);
  if (!blk.enableWriteCache) await node.flush();
}
