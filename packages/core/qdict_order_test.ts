import { deepStrictEqual as assertEquals } from "node:assert";
import { qdictKeys } from "./qdict_order.ts";

Deno.test("qdictKeys orders keys as QEMU's QDict iterates them", () => {
  assertEquals(qdictKeys(["filename", "format", "dirty-flag", "virtual-size"]), [
    "virtual-size",
    "filename",
    "format",
    "dirty-flag",
  ]);
  assertEquals(qdictKeys(["driver", "server.path", "server.type", "export"]), [
    "server.path",
    "driver",
    "export",
    "server.type",
  ]);
});
