/**
 * Opening nodes from blockdev-add style options: common options, node names, inline or
 * referenced children with inherited options, driver options checked by the driver's schema.
 *
 * @module
 */

import { Child, ChildRole } from "./child.ts";
import { type BlockDriver, DEFAULT_LIMITS, type OpenContext } from "./driver.ts";
import { BlockError } from "./errors.ts";
import type { Graph } from "./graph.ts";
import { attachEdge, wouldCycle } from "./graph_change.ts";
import { DEFAULT_FLAGS, Node, type NodeFlags } from "./node.ts";
import { type OptionValues, parseBool, validateOptions } from "./options.ts";
import { childPerm, refreshPermissions } from "./permissions.ts";
import { flattenOptions } from "./json_filename.ts";
import { refreshFilename } from "./refresh_filename.ts";
import { Transaction } from "./transaction.ts";

const COMMON_KEYS = [
  "driver",
  "node-name",
  "read-only",
  "auto-read-only",
  "cache",
  "cache.direct",
  "cache.no-flush",
  "discard",
  "detect-zeroes",
  "force-share",
];

/** What a parent passes down to a child it opens inline. */
export interface Inherited {
  /** The parent's flags. */
  flags: NodeFlags;
  /** The role the child will have. */
  role: number;
  /** The parent's driver kind. */
  parentKind: BlockDriver["kind"];
  /** The parent node. */
  parent: Node;
}

/** The inheritance a node gets from the parent it was opened under, with the parent's flags now. */
export function inheritedFrom(node: Node, parentFlags?: NodeFlags): Inherited | null {
  const from = node.inheritsFrom;
  if (!from) return null;
  return {
    flags: parentFlags ?? from.parent.flags,
    role: from.role,
    parentKind: from.parent.driver.kind,
    parent: from.parent,
  };
}

/** Parses the common options into node flags, applying inheritance from a parent. */
export function parseFlags(options: OptionValues, inherited: Inherited | null): NodeFlags {
  const flags: NodeFlags = { ...DEFAULT_FLAGS };
  if (inherited) {
    flags.readOnly = inherited.flags.readOnly || (inherited.role & ChildRole.COW) !== 0;
    flags.autoReadOnly = inherited.flags.autoReadOnly;
    flags.cacheDirect = inherited.flags.cacheDirect;
    flags.cacheNoFlush = inherited.flags.cacheNoFlush;
    flags.forceShare = inherited.flags.forceShare;
    flags.noIo = inherited.flags.noIo;
    // Lower layers pass discards down by default.
    if (inherited.parentKind === "format") flags.discard = "unmap";
    else flags.discard = inherited.flags.discard;
  }
  const bool = (key: string): boolean | undefined => {
    const v = options[key];
    if (v === undefined) return undefined;
    const b = parseBool(v);
    if (b === undefined) {
      throw new BlockError("EINVAL", `Parameter '${key}' expects 'on' or 'off'`);
    }
    return b;
  };
  const cache = options["cache"];
  if (cache !== undefined) {
    if (typeof cache !== "object" || cache === null) {
      throw new BlockError(
        "EINVAL",
        "Parameter 'cache' expects an object with 'direct' and 'no-flush'",
      );
    }
    for (const [k, v] of Object.entries(cache)) {
      if (k !== "direct" && k !== "no-flush") {
        throw new BlockError("EINVAL", `Parameter 'cache.${k}' is unexpected`);
      }
      options[`cache.${k}`] = v;
    }
  }
  flags.readOnly = bool("read-only") ?? flags.readOnly;
  flags.autoReadOnly = bool("auto-read-only") ?? flags.autoReadOnly;
  flags.cacheDirect = bool("cache.direct") ?? flags.cacheDirect;
  flags.cacheNoFlush = bool("cache.no-flush") ?? flags.cacheNoFlush;
  flags.forceShare = bool("force-share") ?? flags.forceShare;
  const discard = options["discard"];
  if (discard !== undefined) {
    if (discard === "ignore" || discard === "off") flags.discard = "ignore";
    else if (discard === "unmap" || discard === "on") flags.discard = "unmap";
    else throw new BlockError("EINVAL", `Invalid discard option: '${String(discard)}'`);
  }
  const dz = options["detect-zeroes"];
  if (dz !== undefined) {
    if (dz !== "off" && dz !== "on" && dz !== "unmap") {
      throw new BlockError(
        "EINVAL",
        `Parameter 'detect-zeroes' does not accept value '${String(dz)}' (one of: off, on, unmap)`,
      );
    }
    flags.detectZeroes = dz;
  }
  if (flags.detectZeroes === "unmap" && flags.discard !== "unmap") {
    throw new BlockError(
      "EINVAL",
      "setting detect-zeroes to unmap is not allowed without setting discard operation to unmap",
    );
  }
  if (flags.forceShare && !flags.readOnly) {
    throw new BlockError("EINVAL", "force-share=on can only be used with read-only images");
  }
  return flags;
}

function ownerText(driver: BlockDriver): (key: string) => string {
  return driver.kind === "protocol"
    ? (key) => `Block protocol '${driver.name}' doesn't support the option '${key}'`
    : (key) => `Block format '${driver.name}' does not support the option '${key}'`;
}

/**
 * Opens a node. The result has one reference, recorded in the ledger under `holder`.
 * `inherited` is set when a parent opens the node as an inline child.
 */
export async function openNode(
  graph: Graph,
  raw: OptionValues,
  holder: string,
  inherited: Inherited | null,
  openingFor: Node | null = null,
  noIo = false,
): Promise<Node> {
  const options: OptionValues = { ...raw };
  let driverName = options["driver"];
  if (driverName === undefined && typeof options["filename"] === "string") {
    const proto = graph.registry.protocolFor(options["filename"]);
    driverName = proto.name;
    if (proto.parseFilename) {
      const parsed = proto.parseFilename(options["filename"]);
      if (!("filename" in proto.options)) delete options["filename"];
      Object.assign(options, parsed);
    }
  }
  if (typeof driverName !== "string") {
    throw new BlockError("EINVAL", "Parameter 'driver' is missing");
  }
  const driver = graph.registry.get(driverName);
  const flags = parseFlags(options, inherited);
  if (noIo) flags.noIo = true;

  let name: string;
  let autoNamed = false;
  const given = options["node-name"];
  if (given !== undefined) {
    if (typeof given !== "string") {
      throw new BlockError("EINVAL", "Parameter 'node-name' expects a string");
    }
    graph.checkNodeName(given);
    name = given;
  } else {
    name = graph.generateNodeName();
    autoNamed = true;
  }

  const childKeys = new Set(driver.childOptions ?? []);
  if (driver.supportsBacking) childKeys.add("backing");
  const childSpecs = new Map<string, unknown>();
  const own: OptionValues = {};
  for (const [k, v] of Object.entries(options)) {
    if (COMMON_KEYS.includes(k)) continue;
    if (childKeys.has(k)) childSpecs.set(k, v);
    else own[k] = v;
  }
  const validated = validateOptions(
    driver.options,
    own,
    `Block ${driver.kind === "protocol" ? "protocol" : "format"} '${driver.name}'`,
    [],
    ownerText(driver),
  );

  const node = new Node(graph, name, autoNamed, driver, validated, flags);
  if (inherited) node.inheritsFrom = { parent: inherited.parent, role: inherited.role };
  node.openingFor = openingFor;
  for (const k of COMMON_KEYS) {
    if (k !== "driver" && k !== "node-name" && k !== "cache" && options[k] !== undefined) {
      node.explicitCommon[k] = options[k];
    }
  }
  node.givenOptions = { driver: driver.name, ...flattenOptions(own) };
  node.filename = typeof validated["filename"] === "string" ? validated["filename"] : "";
  graph.registerNode(node, holder);

  const ctx: OpenContext = {
    node,
    get readOnly() {
      return flags.readOnly;
    },
    fallBackToReadOnly: () => {
      if (!flags.autoReadOnly || flags.readOnly) return false;
      flags.readOnly = true;
      return true;
    },
    attachChild: (child: Node, childName: string, role: number) =>
      attachDuringOpen(node, child, childName, role),
    openNamed: (o: OptionValues, h: string) => openNode(graph, o, h, null, node, flags.noIo),
    childOption: (childName: string) => {
      if (!childSpecs.has(childName)) return "absent";
      return childSpecs.get(childName) === null ? "none" : "given";
    },
    openChild: async (
      childName: string,
      role: number,
      required: boolean,
      fallback?: OptionValues,
    ) => {
      const spec = childSpecs.has(childName) ? childSpecs.get(childName) : fallback;
      childSpecs.delete(childName);
      if (spec === undefined || spec === null) {
        if (required) {
          throw new BlockError("EINVAL", `A block device must be specified for "${childName}"`);
        }
        return null;
      }
      let target: Node;
      const refHolder = `opening '${name}'`;
      if (typeof spec === "string") {
        const found = graph.findNode(spec);
        if (!found) {
          throw new BlockError("ENOENT", `Cannot find device='${spec}' nor node-name='${spec}'`);
        }
        target = found;
        target.ref(refHolder);
      } else if (typeof spec === "object") {
        target = await openNode(graph, spec as OptionValues, refHolder, {
          flags,
          role,
          parentKind: driver.kind,
          parent: node,
        });
      } else {
        throw new BlockError("EINVAL", `Parameter '${childName}' expects a node name or an object`);
      }
      try {
        const edge = attachDuringOpen(node, target, childName, role);
        // QEMU opens a format or filter node's `file` before naming the node itself.
        if (childName === "file" && driver.kind !== "protocol" && node.children.length === 1) {
          graph.requeueNode(node);
        }
        return edge;
      } finally {
        await target.unref(refHolder);
      }
    },
  };

  try {
    const inst = await driver.open(ctx, validated);
    if (childSpecs.size > 0) {
      const [k] = childSpecs.keys();
      await inst.close();
      throw new BlockError(
        "EINVAL",
        `Block format '${driver.name}' does not support the option '${k}'`,
      );
    }
    node.instance = inst;
    refreshLimits(node);
    node.exactFilename = node.filename;
    refreshFilename(node, { children: false });
    const tran = new Transaction();
    try {
      refreshPermissions([node], tran);
      tran.commit();
    } catch (e) {
      tran.abort();
      node.instance = null;
      await inst.close();
      throw e;
    }
    return node;
  } catch (e) {
    const inst = node.instance;
    node.instance = null;
    if (inst) await inst.close().catch(() => {});
    for (const c of [...node.children]) await graph.releaseChild(c).catch(() => {});
    graph.unregisterNode(node);
    throw BlockError.from(e, { node: name, op: "open" });
  } finally {
    node.openingFor = null;
  }
}

/** Attaches `child` under a node being opened; refused if it would create a cycle. */
function attachDuringOpen(
  parent: Node,
  child: Node,
  name: string,
  role: number,
): Child {
  if (wouldCycle(parent, child)) {
    throw new BlockError(
      "EINVAL",
      `Making '${child.name}' a ${name} child of '${parent.name}' would create a cycle`,
    );
  }
  if (parent.children.some((c) => c.name === name)) {
    throw new BlockError("EEXIST", `Node '${parent.name}' already has a child named '${name}'`);
  }
  const edge = new Child(name, role, parent, 0, 0xf);
  const [perm, shared] = childPerm(parent, edge, parent.perm, parent.shared, child);
  edge.perm = perm;
  edge.shared = shared;
  attachEdge(edge, parent, child);
  return edge;
}

/** Recomputes `node.limits` from its driver and its data children. */
export function refreshLimits(node: Node): void {
  const own = node.instance?.limits ?? {};
  const l = { ...DEFAULT_LIMITS, ...own };
  for (const c of node.children) {
    if (!(c.role & (ChildRole.DATA | ChildRole.FILTERED | ChildRole.COW)) || !c.node) continue;
    const cl = c.node.limits;
    if (cl.maxTransfer && (!own.maxTransfer || cl.maxTransfer < l.maxTransfer || !l.maxTransfer)) {
      l.maxTransfer = l.maxTransfer ? Math.min(l.maxTransfer, cl.maxTransfer) : cl.maxTransfer;
    }
    l.optTransfer = Math.max(l.optTransfer, cl.optTransfer);
    l.memAlignment = Math.max(l.memAlignment, cl.memAlignment);
  }
  if (l.requestAlignment < 1 || (l.requestAlignment & (l.requestAlignment - 1)) !== 0) {
    throw new BlockError(
      "EINVAL",
      `Driver of node '${node.name}' declared request alignment ${l.requestAlignment}`,
    );
  }
  node.limits = l;
}
