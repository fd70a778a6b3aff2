/**
 * What the query commands report, in QEMU's QAPI shapes: BlockDeviceInfo of a node
 * (query-named-block-nodes, query-block's `inserted`), BlockInfo of a Backend
 * (query-block), and the whole graph with permissions (x-debug-query-block-graph).
 *
 * @module
 */

import { type Backend, type Child, type Graph, type Node, Perm } from "@blockgraph/core";
import { displayFilename, imageInfo as imgImageInfo } from "../img/info.ts";

/**
 * QEMU's ImageInfo of `node` (what `img info --output=json` shows of it, with the node's own
 * filename); with `chain`, the backing chain as nested `backing-image`.
 */
export async function imageInfo(node: Node, chain: boolean): Promise<Record<string, unknown>> {
  const info = await imgImageInfo(node);
  info.filename = displayFilename(node);
  const backing = node.backing?.node;
  if (backing && chain) info["backing-image"] = await imageInfo(backing, true);
  return info;
}

function backingDepth(node: Node): number {
  let depth = 0;
  for (let b = node.backing?.node; b; b = b.backing?.node) depth++;
  return depth;
}

/** QEMU's BlockDeviceInfo of `node` (what query-named-block-nodes lists). */
export async function blockDeviceInfo(
  node: Node,
  flat: boolean,
  writeback = true,
): Promise<Record<string, unknown>> {
  const info: Record<string, unknown> = {
    file: displayFilename(node),
    "node-name": node.name,
    ro: node.flags.readOnly,
    drv: node.driver.name,
  };
  const backing = node.backing?.node;
  if (backing) info["backing_file"] = displayFilename(backing);
  Object.assign(info, {
    // QEMU counts the chain only where it reports it (not with `flat`).
    backing_file_depth: flat ? 0 : backingDepth(node),
    encrypted: false,
    detect_zeroes: node.flags.detectZeroes,
    bps: 0,
    bps_rd: 0,
    bps_wr: 0,
    iops: 0,
    iops_rd: 0,
    iops_wr: 0,
    image: await imageInfo(node, !flat),
    cache: { writeback, direct: node.flags.cacheDirect, "no-flush": node.flags.cacheNoFlush },
    write_threshold: 0,
  });
  // Named bitmaps, newest first as QEMU lists them; the member is absent when there are none.
  const bitmaps = node.dirtyBitmaps.filter((b) => b.name !== null).map((b) => b.info());
  if (bitmaps.length > 0) info["dirty-bitmaps"] = bitmaps.reverse();
  return info;
}

/** Whether query-block lists `b`: it has a name or a device (QEMU skips the others). */
export function isMonitorVisible(b: Backend): boolean {
  return b.name !== "" || b.deviceId !== "";
}

/** QEMU's BlockInfo of `b` (one entry of query-block). */
export async function blockInfo(b: Backend): Promise<Record<string, unknown>> {
  const info: Record<string, unknown> = { device: b.name };
  if (b.deviceId) info.qdev = b.deviceId;
  info.type = "unknown";
  info.removable = b.tray.removable;
  info.locked = b.tray.locked;
  const node = b.node;
  if (node) info.inserted = await blockDeviceInfo(node, false, b.enableWriteCache);
  if (b.tray.hasTray) info.tray_open = b.tray.isOpen;
  if (b.deviceId) info["io-status"] = b.iostatus;
  return info;
}

/** QMP's permission names, most significant first as QEMU lists them. */
export function qmpPermNames(perm: number): string[] {
  const out: string[] = [];
  if (perm & Perm.RESIZE) out.push("resize");
  if (perm & Perm.WRITE_UNCHANGED) out.push("write-unchanged");
  if (perm & Perm.WRITE) out.push("write");
  if (perm & Perm.CONSISTENT_READ) out.push("consistent-read");
  return out;
}

/** One node of x-debug-query-block-graph. */
export interface GraphDumpNode {
  /** A number naming the node within this dump. */
  id: number;
  /** `block-backend`, `block-job` or `block-driver`. */
  type: "block-backend" | "block-job" | "block-driver";
  /** The Backend's name ("" when anonymous), the job id, or the node name. */
  name: string;
}

/** One edge of x-debug-query-block-graph. */
export interface GraphDumpEdge {
  /** The parent's id. */
  parent: number;
  /** The child node's id. */
  child: number;
  /** The edge name (`file`, `root`, ...). */
  name: string;
  /** Permissions the parent takes. */
  perm: string[];
  /** Permissions it shares. */
  "shared-perm": string[];
}

/** x-debug-query-block-graph: every parent and node, and every edge with its permissions. */
export function blockGraphDump(graph: Graph): { nodes: GraphDumpNode[]; edges: GraphDumpEdge[] } {
  const ids = new Map<object, number>();
  const nodes: GraphDumpNode[] = [];
  const edges: GraphDumpEdge[] = [];
  const idOf = (o: object, type: GraphDumpNode["type"], name: string): number => {
    let id = ids.get(o);
    if (id === undefined) {
      id = ids.size + 1;
      ids.set(o, id);
      nodes.push({ id, type, name });
    }
    return id;
  };
  const parentId = (c: Child): number => {
    const p = c.parent;
    if (p.parentKind === "backend") return idOf(p, "block-backend", (p as Backend).name);
    if (p.parentKind === "job") {
      const id = (p as unknown as { id?: unknown }).id;
      return idOf(p, "block-job", typeof id === "string" ? id : p.parentDescription());
    }
    const n = p as unknown as Node;
    return idOf(n, "block-driver", n.name);
  };
  for (const b of graph.backends()) idOf(b, "block-backend", b.name);
  for (const n of graph.nodes()) idOf(n, "block-driver", n.name);
  for (const n of graph.nodes()) {
    for (const c of n.parents) {
      edges.push({
        parent: parentId(c),
        child: idOf(n, "block-driver", n.name),
        name: c.name,
        perm: qmpPermNames(c.perm),
        "shared-perm": qmpPermNames(c.shared),
      });
    }
  }
  return { nodes, edges };
}
