/**
 * Graph changes: attach and detach children, set backing, replace a node, append a node
 * above another, insert and drop filters, reopen. Each runs inside a drained section and a
 * transaction: the structural change and the permission refresh apply whole or not at all.
 *
 * @module
 */

import { Child, ChildRole } from "./child.ts";
import { syncEdgeQuiesce } from "./drain.ts";
import type { ReopenHandle } from "./driver.ts";
import { BlockError } from "./errors.ts";
import type { Graph } from "./graph.ts";
import type { Node, NodeFlags } from "./node.ts";
import { inheritedFrom, openNode, parseFlags, refreshLimits } from "./open.ts";
import { type OptionValues, validateOptions } from "./options.ts";
import { childPerm, refreshPermissions } from "./permissions.ts";
import { Transaction } from "./transaction.ts";

/** Links `edge` between `parent` (a node, or null for Backend/job edges) and `node`. */
export function linkChild(edge: Child, parent: Node | null, node: Node): void {
  edge.node = node;
  node.parents.push(edge);
  if (parent) parent.children.push(edge);
}

/** Unlinks `edge` from both ends (its reference is the caller's to drop). */
export function unlinkChild(edge: Child): void {
  const node = edge.node;
  if (node) {
    const i = node.parents.indexOf(edge);
    if (i >= 0) node.parents.splice(i, 1);
  }
  if (edge.parent.parentKind === "node") {
    const parent = edge.parent as Node;
    const j = parent.children.indexOf(edge);
    if (j >= 0) parent.children.splice(j, 1);
  }
  edge.node = null;
}

/**
 * Attaches a new `edge` from `parent` (a node, or null for a Backend's or a job's edge) to
 * `node` and refreshes permissions below it. A conflict throws and leaves the graph as it
 * was; on success the edge holds a reference on `node`.
 */
export function attachEdge(edge: Child, parent: Node | null, node: Node): void {
  const tran = new Transaction();
  linkChild(edge, parent, node);
  syncEdgeQuiesce(edge);
  tran.add({
    abort: () => {
      unlinkChild(edge);
      syncEdgeQuiesce(edge);
    },
  });
  try {
    refreshPermissions([node], tran);
    tran.commit();
  } catch (e) {
    tran.abort();
    throw e;
  }
  node.ref(edge);
}

/** Whether making `child` a child of `parent` would create a cycle. */
export function wouldCycle(parent: Node, child: Node): boolean {
  const seen = new Set<Node>();
  const stack = [child];
  while (stack.length) {
    const n = stack.pop()!;
    if (n === parent) return true;
    if (seen.has(n)) continue;
    seen.add(n);
    for (const c of n.children) if (c.node) stack.push(c.node);
  }
  return false;
}

/** Moves `edge` to point at `to` inside `tran`; the old node's reference drops on commit. */
function moveEdge(edge: Child, to: Node, tran: Transaction): void {
  const from = edge.node!;
  const i = from.parents.indexOf(edge);
  from.parents.splice(i, 1);
  edge.node = to;
  to.parents.push(edge);
  to.ref(edge);
  syncEdgeQuiesce(edge);
  tran.add({
    commit: () => void from.unref(edge),
    abort: () => {
      const j = to.parents.indexOf(edge);
      to.parents.splice(j, 1);
      edge.node = from;
      from.parents.splice(i, 0, edge);
      syncEdgeQuiesce(edge);
      void to.unref(edge);
    },
  });
}

/** Adds a new edge inside `tran`; aborting removes it and drops its reference. */
function addEdge(
  parent: Node,
  node: Node,
  name: string,
  role: number,
  tran: Transaction,
): Child {
  if (wouldCycle(parent, node)) {
    throw new BlockError(
      "EINVAL",
      `Making '${node.name}' a ${name} child of '${parent.name}' would create a cycle`,
    );
  }
  const edge = new Child(name, role, parent, 0, 0xf);
  [edge.perm, edge.shared] = childPerm(parent, edge, parent.perm, parent.shared, node);
  linkChild(edge, parent, node);
  node.ref(edge);
  syncEdgeQuiesce(edge);
  tran.add({
    abort: () => {
      unlinkChild(edge);
      syncEdgeQuiesce(edge);
      void node.unref(edge);
    },
  });
  return edge;
}

/** Removes an edge inside `tran`; its reference drops on commit. */
function removeEdge(edge: Child, tran: Transaction): void {
  if (edge.frozen) {
    throw new BlockError(
      "EPERM",
      `Cannot change frozen '${edge.name}' link from ${edge.parent.parentDescription()}`,
    );
  }
  const node = edge.node!;
  const parent = edge.parent.parentKind === "node" ? edge.parent as Node : null;
  const parentIndex = node.parents.indexOf(edge);
  const childIndex = parent ? parent.children.indexOf(edge) : -1;
  unlinkChild(edge);
  syncEdgeQuiesce(edge);
  tran.add({
    commit: () => void node.unref(edge),
    abort: () => {
      // Back where it was: the order of children decides `children.N` and the primary child.
      edge.node = node;
      node.parents.splice(parentIndex, 0, edge);
      if (parent) parent.children.splice(childIndex, 0, edge);
      syncEdgeQuiesce(edge);
    },
  });
}

/** Runs a structural change with `nodes` drained, then refreshes permissions from `roots`. */
async function transact<T>(
  graph: Graph,
  drained: Node[],
  change: (tran: Transaction) => { result: T; roots: Node[] },
): Promise<T> {
  return await graph.drained(drained, () => {
    const tran = new Transaction();
    try {
      const { result, roots } = change(tran);
      refreshPermissions(roots, tran);
      tran.commit();
      for (const n of roots) if (n.instance) refreshLimits(n);
      return result;
    } catch (e) {
      tran.abort();
      throw e;
    }
  });
}

/** See `Graph.attachChild`. */
export function attachChild(
  graph: Graph,
  parent: Node,
  node: Node,
  name: string,
  role: number,
): Promise<Child> {
  return transact(graph, [parent, node], (tran) => {
    if (parent.children.some((c) => c.name === name)) {
      throw new BlockError("EEXIST", `Node '${parent.name}' already has a child named '${name}'`);
    }
    const edge = addEdge(parent, node, name, role, tran);
    return { result: edge, roots: [parent] };
  });
}

/** See `Graph.detachChild`. */
export function detachChild(graph: Graph, child: Child): Promise<void> {
  const node = child.node;
  if (!node) return Promise.resolve();
  if (child.parent.parentKind !== "node") {
    // A Backend or job lets go of its node itself (Backend.removeRoot, the job's end).
    return Promise.reject(
      new BlockError(
        "EINVAL",
        `Cannot detach the '${child.name}' edge of ${child.parent.parentDescription()}: ` +
          "only edges between nodes can be detached",
      ),
    );
  }
  const roots = child.parent.parentKind === "node" ? [child.parent as Node, node] : [node];
  return transact(graph, [node], (tran) => {
    removeEdge(child, tran);
    return { result: undefined, roots };
  });
}

/** See `Graph.setBacking`. */
export function setBacking(graph: Graph, node: Node, backing: Node | null): Promise<void> {
  const isFilter = node.driver.kind === "filter";
  if (!isFilter && !node.driver.supportsBacking) {
    return Promise.reject(
      new BlockError(
        "EINVAL",
        `Driver '${node.driver.name}' of node '${node.name}' does not support backing files`,
      ),
    );
  }
  const current = node.backing?.node;
  const drained = [node, ...(current ? [current] : []), ...(backing ? [backing] : [])];
  return transact(graph, drained, (tran) => {
    // Looked up inside the drained section: a concurrent change may have moved it.
    const old = node.backing;
    if (old?.frozen) {
      throw new BlockError(
        "EPERM",
        `Cannot change frozen 'backing' link from '${node.name}' to '${old.node?.name}'`,
      );
    }
    const roots = [node];
    if (old) {
      roots.push(old.node!);
      removeEdge(old, tran);
    }
    if (backing) {
      const role = isFilter ? ChildRole.FILTERED | ChildRole.PRIMARY : ChildRole.COW;
      addEdge(node, backing, "backing", role, tran);
    }
    return { result: undefined, roots };
  });
}

/** Moves the parent edges of `from` to `to` inside `tran`; returns the nodes to refresh. */
function replaceNodeNoPerm(from: Node, to: Node, tran: Transaction): Node[] {
  for (const edge of [...from.parents]) {
    if (edge.stayAtNode) continue;
    // An edge from `to`'s own subtree would make a loop (the appended node's child edge).
    if (edge.parent.parentKind === "node" && wouldCycle(edge.parent as Node, to)) continue;
    if (edge.frozen) {
      throw new BlockError("EPERM", `Cannot change '${edge.name}' link to '${from.name}'`);
    }
    moveEdge(edge, to, tran);
  }
  return [to, from];
}

/** See `Graph.replaceNode`. */
export function replaceNode(graph: Graph, from: Node, to: Node): Promise<void> {
  if (from === to) return Promise.resolve();
  return transact(graph, [from, to], (tran) => ({
    result: undefined,
    roots: replaceNodeNoPerm(from, to, tran),
  }));
}

/** See `Graph.append`. */
export function append(graph: Graph, newTop: Node, top: Node): Promise<void> {
  const isFilter = newTop.driver.kind === "filter";
  if (!isFilter && !newTop.driver.supportsBacking) {
    return Promise.reject(
      new BlockError(
        "EINVAL",
        `Driver '${newTop.driver.name}' of node '${newTop.name}' does not support backing files`,
      ),
    );
  }
  const name = isFilter && !newTop.driver.filteredChildIsBacking ? "file" : "backing";
  return transact(graph, [newTop, top], (tran) => {
    if (newTop.children.some((c) => c.name === name)) {
      throw new BlockError("EEXIST", `Node '${newTop.name}' already has a '${name}' child`);
    }
    const role = isFilter ? ChildRole.FILTERED | ChildRole.PRIMARY : ChildRole.COW;
    addEdge(newTop, top, name, role, tran);
    replaceNodeNoPerm(top, newTop, tran);
    return { result: undefined, roots: [newTop] };
  });
}

/** See `Graph.insertFilter`. */
export async function insertFilter(
  graph: Graph,
  node: Node,
  filterOptions: OptionValues,
  holder: string,
): Promise<Node> {
  const driver = graph.registry.get(String(filterOptions["driver"]));
  if (driver.kind !== "filter") {
    throw new BlockError("EINVAL", `Driver '${driver.name}' is not a filter`);
  }
  const childName = driver.filteredChildIsBacking ? "backing" : "file";
  const filter = await openNode(graph, { ...filterOptions, [childName]: node.name }, holder, null);
  try {
    await replaceNode(graph, node, filter);
  } catch (e) {
    await filter.unref(holder);
    throw e;
  }
  return filter;
}

/** See `Graph.dropFilter`. */
export function dropFilter(graph: Graph, filter: Node): Promise<void> {
  const child = filter.filteredChild;
  if (!child?.node) {
    return Promise.reject(new BlockError("EINVAL", `Node '${filter.name}' is not a filter`));
  }
  const below = child.node;
  return transact(graph, [filter, below], (tran) => {
    replaceNodeNoPerm(filter, below, tran);
    removeEdge(child, tran);
    return { result: undefined, roots: [below, filter] };
  });
}

const REOPEN_COMMON = ["read-only", "auto-read-only", "detect-zeroes", "discard", "force-share"];

/**
 * See `Graph.reopen`. Options left out return to their defaults; only the driver's mutable
 * options, the common runtime options, and the `file`/`backing` links may change.
 */
export async function reopen(graph: Graph, node: Node, options: OptionValues): Promise<void> {
  if (!node.instance) throw new BlockError("ENOMEDIUM", `Node '${node.name}' is closed`);
  const given = options["node-name"];
  if (given !== undefined && given !== node.name) {
    throw new BlockError("EINVAL", "Cannot change the option 'node-name'");
  }
  if (options["driver"] !== undefined && options["driver"] !== node.driver.name) {
    throw new BlockError("EINVAL", "Cannot change the option 'driver'");
  }
  const links = new Map<string, Node | null>();
  const own: OptionValues = {};
  const common: OptionValues = {};
  for (const [k, v] of Object.entries(options)) {
    if (k === "node-name" || k === "driver") continue;
    if (k === "file" || k === "backing") {
      if (v === null) links.set(k, null);
      else if (typeof v === "string") {
        const target = graph.findNode(v);
        if (!target) throw new BlockError("ENOENT", `Cannot find device='' nor node-name='${v}'`);
        links.set(k, target);
      } else {
        throw new BlockError("EINVAL", `Cannot change the option '${k}'`);
      }
    } else if (REOPEN_COMMON.includes(k) || k === "cache" || k.startsWith("cache.")) {
      // `cache` and `cache.*` only: qcow2's cache-size and cache-clean-interval are its own.
      common[k] = v;
    } else {
      own[k] = v;
    }
  }
  if (node.backing && !options["backing"] && options["backing"] !== null) {
    throw new BlockError("EINVAL", `backing is missing for '${node.name}'`);
  }
  const mutable = node.driver.mutableOptions ?? [];
  const validated = validateOptions(node.driver.options, own, `Block format '${node.driver.name}'`);
  for (const [k, v] of Object.entries(validated)) {
    if (node.options[k] !== v && !mutable.includes(k)) {
      throw new BlockError(
        "EINVAL",
        own[k] === undefined
          ? `Option '${k}' cannot be reset to its default value`
          : `Cannot change the option '${k}'`,
      );
    }
  }
  const newFlags: NodeFlags = parseFlags(common, inheritedFrom(node));
  for (const k of ["cache.direct", "cache.no-flush"] as const) {
    const was = k === "cache.direct" ? node.flags.cacheDirect : node.flags.cacheNoFlush;
    const now = k === "cache.direct" ? newFlags.cacheDirect : newFlags.cacheNoFlush;
    if (was !== now && common[k] !== undefined) {
      throw new BlockError("EINVAL", `Cannot change the option '${k}'`);
    }
  }
  const queue = reopenQueue(node, newFlags, common);
  const affected = [
    ...queue.map((q) => q.node),
    ...[...links.values()].filter((n): n is Node => n !== null),
  ];
  for (const name of links.keys()) {
    const old = node.children.find((c) => c.name === name);
    if (old?.node) affected.push(old.node);
  }
  await graph.drained(affected, async () => {
    for (const q of queue) if (q.node.writable) await q.node.flush();
    const handles: ReopenHandle[] = [];
    const tran = new Transaction();
    try {
      for (const q of queue) {
        const inst = q.node.instance;
        const opts = q.node === node ? validated : q.node.options;
        if (inst?.reopenPrepare) handles.push(await inst.reopenPrepare(opts, q.flags.readOnly));
      }
      for (const q of queue) {
        const n = q.node;
        const old = { flags: n.flags, options: n.options, explicit: n.explicitCommon };
        n.flags = q.flags;
        n.explicitCommon = q.explicit;
        if (n === node) n.options = { ...n.options, ...validated };
        tran.add({
          abort: () => {
            n.flags = old.flags;
            n.options = old.options;
            n.explicitCommon = old.explicit;
          },
        });
      }
      const roots: Node[] = [node];
      for (const [name, target] of links) relink(node, name, target, tran, roots);
      refreshPermissions(roots, tran);
    } catch (e) {
      tran.abort();
      for (const h of handles) h.abort();
      throw e;
    }
    tran.commit();
    for (const h of handles) h.commit();
    for (const q of queue) refreshLimits(q.node);
  });
}

/** One node of a reopen: its new flags and explicit common options. */
interface Reopening {
  node: Node;
  flags: NodeFlags;
  explicit: OptionValues;
}

/**
 * The nodes a reopen covers: the node, and every child opened inline under it (recursively),
 * whose inherited options (read-only) follow the parent's new ones unless set explicitly.
 */
function reopenQueue(node: Node, flags: NodeFlags, common: OptionValues): Reopening[] {
  const queue: Reopening[] = [{ node, flags, explicit: { ...common } }];
  for (let i = 0; i < queue.length; i++) {
    const q = queue[i]!;
    for (const c of q.node.children) {
      const child = c.node;
      if (!child || child.inheritsFrom?.parent !== q.node) continue;
      if (queue.some((x) => x.node === child)) continue;
      const childFlags = parseFlags({ ...child.explicitCommon }, inheritedFrom(child, q.flags));
      childFlags.cacheDirect = child.flags.cacheDirect;
      childFlags.cacheNoFlush = child.flags.cacheNoFlush;
      queue.push({ node: child, flags: childFlags, explicit: child.explicitCommon });
    }
  }
  return queue;
}

/** Points `node`'s child `name` at `target` (or removes it), inside `tran`. */
function relink(
  node: Node,
  name: string,
  target: Node | null,
  tran: Transaction,
  roots: Node[],
): void {
  const old = node.children.find((c) => c.name === name);
  if (old?.node === target) return;
  if (old?.node && target && old.frozen) {
    throw new BlockError(
      "EPERM",
      `Cannot change frozen '${name}' link from '${node.name}' to '${old.node.name}'`,
    );
  }
  if (old && !target && name === "file") {
    throw new BlockError("EINVAL", `Cannot remove the 'file' child of '${node.name}'`);
  }
  if (old) {
    roots.push(old.node!);
    if (target) {
      if (wouldCycle(node, target)) {
        throw new BlockError(
          "EINVAL",
          `Making '${target.name}' a ${name} child of '${node.name}' would create a cycle`,
        );
      }
      moveEdge(old, target, tran);
    } else removeEdge(old, tran);
  } else if (target) {
    const role = name === "backing" && node.driver.kind !== "filter"
      ? ChildRole.COW
      : ChildRole.FILTERED | ChildRole.PRIMARY;
    addEdge(node, target, name, role, tran);
  }
}
