/**
 * What `info`, `convert` and `snapshot` need to know about an opened image beyond the
 * generic node: its cluster size, the backing file its header names, its dirty bit and its
 * internal snapshots. Only qcow2 has these; other formats answer with nothing.
 *
 * @module
 */

import type { Node } from "@blockgraph/core";
import { Qcow2Instance, type Qcow2Snapshot } from "@blockgraph/drivers";

const BACKING_FORMAT_EXT = 0xe2792aca;
const INCOMPAT_DIRTY = 1n;
const decoder = new TextDecoder();

/** Format facts of one image. */
export interface ImageFacts {
  /** The cluster size, when the format has clusters. */
  clusterSize?: number;
  /** The backing file name as stored in the image. */
  backingFile?: string;
  /** The backing format as stored in the image. */
  backingFormat?: string;
  /** Whether the image was not cleanly shut down. */
  dirty: boolean;
  /** Internal snapshots. */
  snapshots: Qcow2Snapshot[];
}

/** The qcow2 instance behind `node`, or `null`. */
export function qcow2Of(node: Node): Qcow2Instance | null {
  return node.instance instanceof Qcow2Instance ? node.instance : null;
}

/**
 * Whether `node`'s format stores persistent dirty bitmaps (QEMU's
 * bdrv_supports_persistent_dirty_bitmap): qcow2 version 3 only.
 */
export function supportsPersistentBitmaps(node: Node): boolean {
  const q = qcow2Of(node);
  return q !== null && q.image.header.version >= 3;
}

/** The facts of `node`'s format. */
export function imageFacts(node: Node): ImageFacts {
  const q = qcow2Of(node);
  if (!q) return { dirty: false, snapshots: [] };
  const h = q.image.header;
  const facts: ImageFacts = {
    clusterSize: q.image.cs,
    dirty: (h.incompatible & INCOMPAT_DIRTY) !== 0n,
    snapshots: q.snapshotList(),
  };
  if (h.backingFile !== undefined) facts.backingFile = h.backingFile;
  const ext = h.extensions.find((x) => x.type === BACKING_FORMAT_EXT);
  if (ext) facts.backingFormat = decoder.decode(ext.data);
  return facts;
}
