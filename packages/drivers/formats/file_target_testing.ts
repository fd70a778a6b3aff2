/**
 * A conformance target for a format over an image file: every case gets a fresh temporary
 * folder in which the driver creates the image, and the target's cleanup removes it. Test
 * support for the format tests; not part of the published package.
 *
 * @module
 */

import type { BlockDriver, DriverRegistry } from "@blockgraph/core";
import {
  CONFORMANCE_HOLDER,
  type ConformanceCapabilities,
  type ConformanceTarget,
} from "../conformance/mod.ts";

/** `driver` over the `file` protocol, on an image of `size` bytes named `filename` it creates. */
export function formatOverFile(
  driver: BlockDriver,
  registry: DriverRegistry,
  capabilities: ConformanceCapabilities,
  image: { size: number; filename: string },
): ConformanceTarget {
  const tempDirs: string[] = [];
  return {
    registry,
    capabilities,
    async open(graph, { readOnly }) {
      const dir = await Deno.makeTempDir({ prefix: `blockgraph-${driver.name}-` });
      tempDirs.push(dir);
      const filename = `${dir}/${image.filename}`;
      await driver.create!({ filename, size: image.size }, registry);
      return graph.open(
        {
          driver: driver.name,
          discard: "unmap",
          "read-only": readOnly,
          file: { driver: "file", filename },
        },
        CONFORMANCE_HOLDER,
      );
    },
    async cleanup() {
      for (const dir of tempDirs.splice(0)) await Deno.remove(dir, { recursive: true });
    },
  };
}
