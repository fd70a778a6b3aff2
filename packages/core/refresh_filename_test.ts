import { deepStrictEqual as assertEquals, throws } from "node:assert";
import { ChildRole } from "./child.ts";
import { type BlockDriver, type DriverInstance, DriverRegistry } from "./driver.ts";
import { BlockError } from "./errors.ts";
import { Graph } from "./graph.ts";
import type { Node } from "./node.ts";
import type { OptionValues } from "./options.ts";
import {
  fullBackingFilename,
  nodeDirname,
  pathCombine,
  pathHasProtocol,
  refreshFilename,
} from "./refresh_filename.ts";

function instance(size = 1 << 20): DriverInstance {
  return {
    getLength: () => size,
    preadv: () => Promise.resolve(),
    pwritev: () => Promise.resolve(),
    close: () => Promise.resolve(),
  };
}

/** A host file: keeps the name it was opened with, whatever else it was given. */
const hostfile: BlockDriver = {
  name: "hostfile",
  kind: "protocol",
  options: {
    filename: { type: "string", description: "path", required: true },
    aio: { type: "string", description: "engine" },
  },
  open(ctx, o) {
    ctx.node.filename = o.filename as string;
    return Promise.resolve(instance());
  },
};

/** Like null-co: `zero://` unless a strong option was given. */
const zero: BlockDriver = {
  name: "zero",
  kind: "protocol",
  options: {
    size: { type: "size", description: "size", default: 1 << 20 },
    "read-zeroes": { type: "bool", description: "zeroes", default: false },
    latency: { type: "int", description: "weak", default: 0 },
  },
  strongOptions: ["size", "read-zeroes"],
  exactFilename: (_node, o) =>
    Object.keys(o).every((k) => k === "driver" || k === "filename") ? "zero://" : "",
  open: (_ctx, o) => Promise.resolve(instance(o.size as number)),
};

/** Like nbd: no directory. */
const net: BlockDriver = {
  name: "net",
  kind: "protocol",
  options: { "server.path": { type: "string", description: "socket" } },
  strongOptions: ["server."],
  dirname() {
    throw new BlockError("EINVAL", "Cannot generate a base directory for NET nodes");
  },
  open(ctx) {
    ctx.node.filename = "net://x";
    return Promise.resolve(instance());
  },
};

/** A format with a strong `offset`, a weak `cache-size`, and the backing its image `names`. */
const wrap: BlockDriver = {
  name: "wrap",
  kind: "format",
  childOptions: ["file"],
  supportsBacking: true,
  options: {
    offset: { type: "size", description: "strong" },
    "cache-size": { type: "size", description: "weak" },
    names: { type: "string", description: "the backing file the image names", default: "" },
  },
  strongOptions: ["offset"],
  async open(ctx, o) {
    await ctx.openChild("file", ChildRole.IMAGE, true);
    ctx.node.autoBackingFile = o.names as string;
    await ctx.openChild("backing", ChildRole.COW, false);
    return instance();
  },
};

/** A filter. */
const flt: BlockDriver = {
  name: "flt",
  kind: "filter",
  childOptions: ["file"],
  options: {},
  async open(ctx) {
    await ctx.openChild("file", ChildRole.FILTERED | ChildRole.PRIMARY, true);
    return instance();
  },
};

/** Runs `fn` with a graph of the drivers above; `open` opens a node and gives its filename. */
async function withGraph(
  fn: (
    open: (o: OptionValues) => Promise<string>,
    node: (o: OptionValues) => Promise<Node>,
  ) => Promise<void>,
): Promise<void> {
  const graph = new Graph({ registry: new DriverRegistry([hostfile, zero, net, wrap, flt]) });
  const held: Node[] = [];
  const node = async (o: OptionValues) => {
    const n = await graph.open(o, "test");
    held.push(n);
    return n;
  };
  try {
    await fn(async (o) => (await node(o)).filename, node);
  } finally {
    for (const n of held.reverse()) await n.unref("test");
    await graph.closeAll();
  }
}

Deno.test("refreshFilename: a protocol keeps the name it was opened with", async () => {
  await withGraph(async (open) => {
    assertEquals(await open({ driver: "hostfile", filename: "a.img", aio: "x" }), "a.img");
    assertEquals(await open({ driver: "zero" }), "zero://");
    assertEquals(await open({ driver: "zero", latency: 5 }), "zero://");
    assertEquals(
      await open({ driver: "zero", size: "1M" }),
      'json:{"driver": "zero", "size": "1M"}',
    );
    assertEquals(
      await open({ driver: "zero", "read-zeroes": true, size: 512 }),
      'json:{"read-zeroes": true, "driver": "zero", "size": 512}',
    );
  });
});

Deno.test("refreshFilename: a format over a protocol takes its name unless a strong option stands in the way", async () => {
  await withGraph(async (open) => {
    const file = { driver: "hostfile", filename: "a.img" };
    assertEquals(await open({ driver: "wrap", file }), "a.img");
    assertEquals(
      await open({ driver: "wrap", "cache-size": "1M", "read-only": true, file }),
      "a.img",
    );
    assertEquals(
      await open({ driver: "wrap", offset: "512", file }),
      'json:{"offset": "512", "driver": "wrap", "file": {"driver": "hostfile", "filename": "a.img"}}',
    );
    // Over a protocol without a plain name, over a format, under a filter: JSON.
    assertEquals(
      await open({ driver: "wrap", file: { driver: "zero", size: 4096 } }),
      'json:{"driver": "wrap", "file": {"driver": "zero", "size": 4096}}',
    );
    assertEquals(
      await open({ driver: "wrap", file: { driver: "wrap", file } }),
      'json:{"driver": "wrap", "file": {"driver": "wrap", "file": {"driver": "hostfile", ' +
        '"filename": "a.img"}}}',
    );
    assertEquals(
      await open({ driver: "flt", file }),
      'json:{"driver": "flt", "file": {"driver": "hostfile", "filename": "a.img"}}',
    );
    // Nested options are spelled with dots, as QEMU keeps them.
    assertEquals(
      await open({ driver: "wrap", offset: 1, file: { driver: "net", server: { path: "/s" } } }),
      'json:{"offset": 1, "driver": "wrap", "file": {"server.path": "/s", "driver": "net"}}',
    );
  });
});

Deno.test("refreshFilename quotes names in a JSON filename as QEMU's writer does", async () => {
  await withGraph(async (open) => {
    assertEquals(
      await open({
        driver: "wrap",
        offset: 0,
        file: { driver: "hostfile", filename: 'é"\\\t.img' },
      }),
      'json:{"offset": 0, "driver": "wrap", "file": {"driver": "hostfile", "filename": ' +
        '"\\u00E9\\"\\\\\\t.img"}}',
    );
  });
});

Deno.test("refreshFilename cuts a JSON filename at QEMU's 4096 bytes with '...'", async () => {
  await withGraph(async (open) => {
    const name = await open({
      driver: "wrap",
      offset: 0,
      file: { driver: "hostfile", filename: "x".repeat(5000) },
    });
    assertEquals(name.length, 4095);
    assertEquals(name.endsWith("xxx..."), true);
  });
});

Deno.test("refreshFilename: a backing file other than the one the image names is said", async () => {
  await withGraph(async (open, node) => {
    const file = { driver: "hostfile", filename: "top.img" };
    await node({ driver: "hostfile", filename: "b.img", "node-name": "b" });
    // The backing the image names, opened from that name: nothing to say.
    assertEquals(await open({ driver: "wrap", names: "b.img", backing: "b", file }), "top.img");
    const other = await open({ driver: "wrap", names: "c.img", backing: "b", file });
    assertEquals(
      other,
      'json:{"backing": {"driver": "hostfile", "filename": "b.img"}, "driver": "wrap", ' +
        '"file": {"driver": "hostfile", "filename": "top.img"}}',
    );
    const none = await node({ driver: "wrap", names: "c.img", backing: null, file });
    assertEquals(
      none.filename,
      'json:{"backing": null, "driver": "wrap", "file": {"driver": "hostfile", "filename": ' +
        '"top.img"}}',
    );
    // As qemu-img info opens images (no I/O): the backing file does not count.
    refreshFilename(none, { noIo: true });
    assertEquals(none.filename, "top.img");
  });
});

Deno.test("nodeDirname and fullBackingFilename take the directory of the image's file", async () => {
  await withGraph(async (_open, node) => {
    const top = await node({
      driver: "wrap",
      offset: 0,
      file: { driver: "hostfile", filename: "sub/dir/top.img" },
    });
    assertEquals(nodeDirname(top), "sub/dir/");
    assertEquals(fullBackingFilename(top, "b.img"), "sub/dir/b.img");
    assertEquals(fullBackingFilename(top, "/abs/b.img"), "/abs/b.img");
    assertEquals(fullBackingFilename(top, 'json:{"driver": "x"}'), 'json:{"driver": "x"}');
    const net = await node({ driver: "wrap", file: { driver: "net" } });
    throws(() => fullBackingFilename(net, "b.img"), /Cannot generate a base directory for NET/);
    assertEquals(fullBackingFilename(net, "nbd://h/b"), "nbd://h/b");
    const z = await node({ driver: "zero", size: 512 });
    throws(() => nodeDirname(z), /^BlockError: Cannot generate a base directory for zero nodes$/);
  });
});

Deno.test("pathCombine and pathHasProtocol follow QEMU's path_combine", () => {
  assertEquals(pathCombine("a.img", "b.img"), "b.img");
  assertEquals(pathCombine("/x/a.img", "b.img"), "/x/b.img");
  assertEquals(pathCombine("/x/a.img", "/y/b.img"), "/y/b.img");
  assertEquals(pathCombine("nbd:x", "b"), "nbd:b");
  assertEquals(pathCombine("null-co://", "b"), "null-co://b");
  assertEquals(pathHasProtocol("json:{}"), true);
  assertEquals(pathHasProtocol("a/b:c"), false);
  assertEquals(pathHasProtocol("b.img"), false);
});
