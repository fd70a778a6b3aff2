/**
 * Permissions: what each user of a node takes and what it lets others take.
 *
 * A node's users must agree: every permission one user takes must be shared by every other
 * user of the same node. Permissions are recomputed top-down on every graph change (see
 * {@link refreshPermissions} in `graph.ts`), and a conflict rolls the whole change back.
 *
 * @module
 */

import { type Child, ChildRole } from "./child.ts";
import type { Node } from "./node.ts";
import { Transaction } from "./transaction.ts";
import { BlockError } from "./errors.ts";

/** Permission bits, with QEMU's values. */
export const Perm = {
  /** The user needs reads to return data consistent with what was written. */
  CONSISTENT_READ: 0x1,
  /** The user writes data that changes what the node reads. */
  WRITE: 0x2,
  /** The user writes only data that does not change what the node reads (copy-on-read). */
  WRITE_UNCHANGED: 0x4,
  /** The user changes the node's size. */
  RESIZE: 0x8,
  /** Every permission. */
  ALL: 0xf,
} as const;

/** The permissions a filter passes through to its filtered child. */
export const PERM_PASSTHROUGH = Perm.CONSISTENT_READ | Perm.WRITE | Perm.WRITE_UNCHANGED |
  Perm.RESIZE;

const NAMES: [number, string][] = [
  [Perm.CONSISTENT_READ, "consistent read"],
  [Perm.WRITE, "write"],
  [Perm.WRITE_UNCHANGED, "write unchanged"],
  [Perm.RESIZE, "resize"],
];

/** Names the permissions in `perm`, as QEMU does: `"consistent read, write"`. */
export function permNames(perm: number): string {
  return NAMES.filter(([bit]) => perm & bit).map(([, name]) => name).join(", ");
}

/** Parses a permission name list (`consistent-read`, `write`, ...) as QMP spells them. */
export function parsePermNames(names: readonly string[]): number {
  let perm = 0;
  for (const name of names) {
    const found = NAMES.find(([, n]) => n.replaceAll(" ", "-") === name);
    if (!found) throw new BlockError("EINVAL", `Unknown permission '${name}'`);
    perm |= found[0];
  }
  return perm;
}

/** Whether `perm` includes any kind of write. */
export function isWritePerm(perm: number): boolean {
  return (perm & (Perm.WRITE | Perm.WRITE_UNCHANGED)) !== 0;
}

// ---------------------------------------------------------------- refresh

/**
 * QEMU's default permissions a node takes on a child, by the child's role: filters pass
 * everything through; backing (COW) children are only read; storage children of formats
 * get write and resize when the format is writable and never share write or resize.
 */
export function defaultChildPerm(
  node: Node,
  role: number,
  perm: number,
  shared: number,
): [number, number] {
  if (role & ChildRole.FILTERED) {
    return [perm & PERM_PASSTHROUGH, shared & PERM_PASSTHROUGH];
  }
  if (role & ChildRole.COW) {
    let nshared = (shared & Perm.WRITE) ? Perm.WRITE | Perm.RESIZE : 0;
    nshared |= Perm.CONSISTENT_READ | Perm.WRITE_UNCHANGED;
    return [perm & Perm.CONSISTENT_READ, nshared];
  }
  let nperm = perm & PERM_PASSTHROUGH;
  let nshared = shared & PERM_PASSTHROUGH;
  if (role & ChildRole.METADATA) {
    if (node.writable) nperm |= Perm.WRITE | Perm.RESIZE;
    nperm |= Perm.CONSISTENT_READ;
    nshared &= ~(Perm.WRITE | Perm.RESIZE);
  }
  if (role & ChildRole.DATA) {
    nshared &= ~Perm.RESIZE;
    if (nperm & Perm.WRITE_UNCHANGED) nperm |= Perm.WRITE;
    if (nperm & Perm.WRITE) nperm |= Perm.RESIZE;
  }
  return [nperm, nshared];
}

/**
 * The permissions `node` takes on `child` given its users' cumulative permissions; a child
 * node with `force-share` shares everything (QEMU's `bdrv_child_perm`). `target` is the child
 * node, for an edge not attached yet.
 */
export function childPerm(
  node: Node,
  child: Child,
  perm: number,
  shared: number,
  target: Node | null = child.node,
): [number, number] {
  const inst = node.instance;
  const [p, s] = inst?.childPerm
    ? inst.childPerm(child, child.role, perm, shared)
    : defaultChildPerm(node, child.role, perm, shared);
  return [p, target?.flags.forceShare ? Perm.ALL : s];
}

/** Nodes reachable downward from `roots`, every parent before its children. */
export function topologicalOrder(roots: Iterable<Node>): Node[] {
  const seen = new Set<Node>();
  const post: Node[] = [];
  const visit = (n: Node): void => {
    if (seen.has(n)) return;
    seen.add(n);
    for (const c of n.children) if (c.node) visit(c.node);
    post.push(n);
  };
  for (const r of roots) visit(r);
  return post.reverse();
}

function conflictMessage(node: Node, a: Child, b: Child, perms: number): string {
  return `Permission conflict on node '${node.name}': permissions '${permNames(perms)}' are ` +
    `both required by ${b.parent.parentDescription()} (uses node '${node.name}' as ` +
    `'${b.name}' child) and unshared by ${a.parent.parentDescription()} (uses node ` +
    `'${node.name}' as '${a.name}' child). To release it, ${a.parent.releaseHint()}`;
}

/**
 * Recomputes permissions top-down over `roots` and everything below them, recording every
 * change in `tran`. Throws a BlockError (EPERM) naming the node, the permission and both
 * users on the first conflict; the caller aborts `tran` to roll the graph back whole.
 */
export function refreshPermissions(roots: Iterable<Node>, tran: Transaction): void {
  for (const node of topologicalOrder(roots)) {
    const parents = node.parents;
    for (const a of parents) {
      for (const b of parents) {
        if (a === b) continue;
        const missing = b.perm & ~a.shared;
        if (missing) throw new BlockError("EPERM", conflictMessage(node, a, b, missing));
      }
    }
    let perm = 0;
    let shared: number = Perm.ALL;
    for (const c of parents) {
      perm |= c.perm;
      shared &= c.shared;
    }
    if (isWritePerm(perm) && node.flags.readOnly) {
      const user = parents.find((c) => isWritePerm(c.perm))!;
      throw new BlockError(
        "EPERM",
        `Block node is read-only: node '${node.name}' cannot give ` +
          `'${permNames(user.perm & (Perm.WRITE | Perm.WRITE_UNCHANGED))}' to ` +
          `${user.describe()}; open the node read-write or use it read-only`,
      );
    }
    node.instance?.checkPerm?.(perm, shared, tran);
    setPerms(node, perm, shared, tran);
    for (const c of node.children) {
      const [np, ns] = childPerm(node, c, perm, shared);
      if (np !== c.perm || ns !== c.shared) setPerms(c, np, ns, tran);
    }
  }
}

/**
 * Sets what a node or an edge takes and shares, recording in `tran` how to put it back.
 */
function setPerms(
  holder: { perm: number; shared: number },
  perm: number,
  shared: number,
  tran: Transaction,
): void {
  const op = holder.perm;
  const os = holder.shared;
  holder.perm = perm;
  holder.shared = shared;
  tran.add({
    abort: () => {
      holder.perm = op;
      holder.shared = os;
    },
  });
}

/**
 * Changes what `edge` takes and shares and refreshes the permissions below it, as one
 * transaction: on a conflict it throws with everything as it was.
 */
export function changeEdgePerm(edge: Child, perm: number, shared: number): void {
  const tran = new Transaction();
  try {
    setPerms(edge, perm, shared, tran);
    if (edge.node) refreshPermissions([edge.node], tran);
    tran.commit();
  } catch (e) {
    tran.abort();
    throw e;
  }
}
