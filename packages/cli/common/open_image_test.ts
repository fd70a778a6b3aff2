import { deepStrictEqual as assertEquals, rejects } from "node:assert";
import { Graph } from "@blockgraph/core";
import { defaultRegistry } from "@blockgraph/drivers";
import { DEFAULT_CACHE, type OpenedImage, openImage, type OpenRequest } from "./open_image.ts";

/** Opens `filename` (with `more`) read-only in a new graph, runs `fn`, closes everything. */
async function withOpened(
  filename: string,
  more: Partial<OpenRequest>,
  fn: (image: OpenedImage, warnings: string[]) => void | Promise<void>,
): Promise<void> {
  const graph = new Graph({ registry: defaultRegistry() });
  const warnings: string[] = [];
  try {
    const image = await openImage(graph, {
      filename,
      readOnly: true,
      cache: DEFAULT_CACHE,
      discard: "ignore",
      ...more,
    }, (w) => warnings.push(w));
    try {
      await fn(image, warnings);
    } finally {
      await image.backend.unref();
    }
  } finally {
    await graph.closeAll();
  }
}

Deno.test("openImage opens a json: filename by its options, nested or dotted", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/a.raw`;
    await Deno.writeFile(path, new Uint8Array(4096).fill(7));
    const file = `{"driver": "file", "filename": "${path}"}`;
    await withOpened(`json:{"driver": "raw", "file": ${file}}`, {}, ({ node }) => {
      assertEquals([node.driver.name, node.filename, node.getLength()], ["raw", path, 4096]);
    });
    await withOpened(`json:{"driver": "raw", "offset": 512, "file.filename": "${path}"}`, {}, (
      { node },
    ) => {
      assertEquals(node.getLength(), 3584);
      assertEquals(
        node.filename,
        `json:{"offset": 512, "driver": "raw", "file": {"driver": "file", "filename": "${path}"}}`,
      );
    });
    // Without a driver, the format is probed from the file, as for a plain name.
    await withOpened(`json:{"file": ${file}}`, { readOnly: false }, ({ node }, warnings) => {
      assertEquals(node.driver.name, "raw");
      assertEquals(warnings.length, 1);
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("openImage: -f wins over the driver a json: filename gives", async () => {
  await withOpened('json:{"driver": "qcow2", "file": {"driver": "null-co"}}', {
    format: "raw",
  }, ({ node }) => {
    assertEquals([node.driver.name, node.filename], ["raw", "null-co://"]);
  });
});

Deno.test("openImage refuses bad json: filenames in qemu-img's words", async () => {
  const graph = new Graph({ registry: defaultRegistry() });
  const open = (filename: string) =>
    openImage(
      graph,
      { filename, readOnly: true, cache: DEFAULT_CACHE, discard: "ignore" },
      () => {},
    );
  try {
    await rejects(open("json:{"), {
      message: "Could not parse the JSON options: JSON parse error, premature EOI",
    });
    await rejects(open("json:[]"), { message: "Invalid JSON object given" });
    await rejects(open("json:{}"), { message: "Must specify either driver or file" });
  } finally {
    await graph.closeAll();
  }
});
