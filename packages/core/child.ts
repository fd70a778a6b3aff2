/**
 * Child edges: a parent's reference to a node, with its role and permissions.
 *
 * @module
 */

import type { Node } from "./node.ts";

/** Role bits of a child edge, with QEMU's values. */
export const ChildRole = {
  /** The child holds guest data. */
  DATA: 1 << 0,
  /** The child holds format metadata. */
  METADATA: 1 << 1,
  /** The child shows exactly the parent's data (a filter's child). */
  FILTERED: 1 << 2,
  /** The child is a backing file: unallocated parent ranges read from it. */
  COW: 1 << 3,
  /** The child whose filename best names the parent. */
  PRIMARY: 1 << 4,
  /** A format driver's usual `file` child: DATA | METADATA | PRIMARY. */
  IMAGE: (1 << 0) | (1 << 1) | (1 << 4),
} as const;

/** Names of the role bits, for graph dumps. */
export function roleNames(role: number): string[] {
  const names: string[] = [];
  if (role & ChildRole.DATA) names.push("data");
  if (role & ChildRole.METADATA) names.push("metadata");
  if (role & ChildRole.FILTERED) names.push("filtered");
  if (role & ChildRole.COW) names.push("cow");
  if (role & ChildRole.PRIMARY) names.push("primary");
  return names;
}

/** What kind of thing holds a child edge. */
export type ParentKind = "node" | "backend" | "job";

/**
 * The parent side of a child edge: a node, a Backend or a job. The graph calls these when the
 * child's node is drained, resized or changes medium.
 */
export interface ChildParent {
  /** Which kind of parent this is. */
  readonly parentKind: ParentKind;
  /** Describes the parent for messages: `node 'qcow0'`, `block device 'drive0'`. */
  parentDescription(): string;
  /** Says what the user can do to release this parent's use of a node. */
  releaseHint(): string;
  /** The child's node entered a drained section: stop issuing requests through `child`. */
  childDrainedBegin(child: Child): void;
  /** The child's node left its drained section. */
  childDrainedEnd(child: Child): void;
  /** Whether the parent still has requests in flight through `child`. */
  childDrainedPoll(child: Child): boolean;
  /** The child's node changed size. */
  childResized?(child: Child): void;
}

/**
 * An edge from a parent to a node. It holds one reference on the node for as long as it is
 * attached. Only the graph creates and moves children.
 */
export class Child {
  /** The edge name: `file`, `backing`, `root`, `target`, `children.0`. */
  readonly name: string;
  /** Role bits ({@link ChildRole}). */
  role: number;
  /** The parent holding this edge. */
  readonly parent: ChildParent;
  /** The permissions the parent takes on the node ({@link Perm} bits). */
  perm: number;
  /** The permissions the parent lets other users take. */
  shared: number;
  /** The node this edge points to; `null` only while the edge is being torn down. */
  node: Node | null = null;
  /** While positive, the edge cannot be moved to another node (a job depends on it). */
  frozen = 0;
  /** Whether the parent is quiesced through this edge (its node is drained). */
  quiescedParent = false;
  /** Edges that must stay at their node when the node is replaced. */
  stayAtNode = false;

  /** Creates a detached edge; the graph attaches it. */
  constructor(name: string, role: number, parent: ChildParent, perm: number, shared: number) {
    this.name = name;
    this.role = role;
    this.parent = parent;
    this.perm = perm;
    this.shared = shared;
  }

  /** Describes the edge for messages: `node 'qcow0' (as 'file')`. */
  describe(): string {
    return `${this.parent.parentDescription()} (as '${this.name}')`;
  }
}
