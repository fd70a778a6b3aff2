import fs from "node:fs";
import { assertEquals } from "../conformance/mod.ts";
import { FALLOC } from "./engine.ts";
import { openRw, rejectsAt, sharedEngineChecks, withDir } from "./engine_testing.ts";
import { createThreadsEngine } from "./threads.ts";

sharedEngineChecks("threads engine", createThreadsEngine, [3, 4], false, false);

Deno.test("threads engine: fallocate is ENOTSUP, fsync works", async () => {
  await withDir(async (dir) => {
    const path = `${dir}/t.img`;
    await Deno.writeFile(path, new Uint8Array(4096));
    const fd = openRw(path, false);
    const engine = createThreadsEngine({ direct: false });
    assertEquals(engine.name, "threads", "name");
    await rejectsAt(engine.fallocate(fd, FALLOC.ZERO_RANGE, 512, 512), "ENOTSUP", 512);
    await engine.fsync(fd, true);
    await engine.fsync(fd, false);
    fs.closeSync(fd);
    await engine.release();
  });
});
