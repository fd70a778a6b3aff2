/**
 * Node commands: `blockdev-add`, `blockdev-del`, `blockdev-reopen`, `block_resize`, and the
 * graph queries `query-named-block-nodes`, `query-block`, `x-debug-query-block-graph`.
 *
 * @module
 */

import { type Graph, type Node, type OptionValues, Perm } from "@blockgraph/core";
import { blockDeviceInfo, blockGraphDump, blockInfo, isMonitorVisible } from "./block_info.ts";
import type { QmpCommand } from "./daemon.ts";
import { genericError } from "./qmp_error.ts";
import { checkBlockdevOptions } from "./blockdev_schema.ts";

/**
 * blockdev-add: opens the node tree `options` describes (children inline or by node name)
 * and gives the monitor the reference on its root, which needs a node name.
 */
export async function blockdevAdd(graph: Graph, options: Record<string, unknown>): Promise<Node> {
  const driver = options.driver;
  if (driver === undefined) throw genericError("Parameter 'driver' is missing");
  if (typeof driver !== "string") {
    throw genericError("Invalid parameter type for 'driver', expected: string");
  }
  if (!graph.registry.find(driver)) {
    throw genericError(`Parameter 'driver' does not accept value '${driver}'`);
  }
  if (options["node-name"] === undefined) {
    throw genericError("'node-name' must be specified for the root node");
  }
  const node = await graph.open(options as OptionValues, "blockdev-add");
  graph.addMonitorNode(node, "blockdev-add");
  return node;
}

/**
 * The node `device` (a Backend's name: its root) or `node-name` names, with QEMU's lookup
 * message ("Cannot find device='x' nor node-name='y'").
 */
export function lookupNode(graph: Graph, device?: string, nodeName?: string): Node {
  if (device !== undefined) {
    const b = graph.findBackend(device);
    if (b) {
      if (!b.node) throw genericError(`Device '${device}' has no medium`);
      return b.node;
    }
  }
  if (nodeName !== undefined) {
    const n = graph.findNode(nodeName);
    if (n) return n;
  }
  throw genericError(`Cannot find device='${device ?? ""}' nor node-name='${nodeName ?? ""}'`);
}

/** block_resize: resizes a node through a Backend of its own that takes `resize`. */
export async function blockResize(graph: Graph, node: Node, size: number): Promise<void> {
  if (size < 0) throw genericError("Parameter 'size' expects a >0 size");
  const b = graph.createBackend({ perm: Perm.RESIZE, shared: Perm.ALL });
  try {
    await b.insertRoot(node);
    await b.truncate(size, false, "off");
  } finally {
    await b.unref();
  }
}

function newestFirst(graph: Graph): Node[] {
  return graph.nodes().reverse();
}

/** The node commands. */
export const nodeCommands: readonly QmpCommand[] = [
  {
    name: "blockdev-add",
    args: null,
    async run(args, { daemon }) {
      await blockdevAdd(daemon.graph, checkBlockdevOptions(daemon.graph.registry, args));
      return {};
    },
  },
  {
    name: "blockdev-del",
    args: { "node-name": "str" },
    async run(args, { daemon }) {
      await daemon.graph.blockdevDel(args["node-name"] as string);
      return {};
    },
  },
  {
    name: "blockdev-reopen",
    args: { options: { list: "object" } },
    async run(args, { daemon }) {
      const graph = daemon.graph;
      const list = args.options as Record<string, unknown>[];
      const targets: [Node, OptionValues][] = [];
      list.forEach((o, i) => checkBlockdevOptions(graph.registry, o, { prefix: `options[${i}].` }));
      list.forEach((o) => {
        const name = o["node-name"];
        if (typeof name !== "string") throw genericError("node-name not specified");
        const node = graph.findNode(name);
        if (!node) throw genericError(`Failed to find node with node-name='${name}'`);
        targets.push([node, o as OptionValues]);
      });
      for (const [node, options] of targets) await graph.reopen(node, options);
      return {};
    },
  },
  {
    name: "block_resize",
    args: { "*device": "str", "*node-name": "str", size: "int" },
    async run(args, { daemon }) {
      const node = lookupNode(
        daemon.graph,
        args.device as string | undefined,
        args["node-name"] as string | undefined,
      );
      await blockResize(daemon.graph, node, args.size as number);
      return {};
    },
  },
  {
    name: "query-named-block-nodes",
    args: { "*flat": "bool" },
    async run(args, { daemon }) {
      const flat = (args.flat as boolean | undefined) ?? false;
      const out = [];
      for (const n of newestFirst(daemon.graph)) {
        if (n.isOpen) out.push(await blockDeviceInfo(n, flat));
      }
      return out;
    },
  },
  {
    name: "query-block",
    args: {},
    async run(_args, { daemon }) {
      const out = [];
      for (const b of daemon.graph.backends()) {
        if (isMonitorVisible(b)) out.push(await blockInfo(b));
      }
      return out;
    },
  },
  {
    name: "x-debug-query-block-graph",
    args: {},
    run: (_args, { daemon }) => blockGraphDump(daemon.graph),
  },
];
