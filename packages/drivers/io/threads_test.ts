import fs from "node:fs";
import { assertEquals } from "../conformance/mod.ts";
import { FALLOC } from "./engine.ts";
import {
  drainInFlight,
  enospc,
  kernelErrors,
  openRw,
  randomIo,
  rejectsAt,
  withDir,
} from "./engine_testing.ts";
import { createThreadsEngine } from "./threads.ts";

Deno.test("threads engine: random concurrent vectored I/O agrees with the model", async () => {
  await randomIo(createThreadsEngine, false, 3);
});

Deno.test("threads engine: O_DIRECT through the aligned bounce pool", async () => {
  await randomIo(createThreadsEngine, true, 4);
});

Deno.test("threads engine: EBADF and EINVAL carry errno and offset, and the engine goes on", async () => {
  await kernelErrors(createThreadsEngine);
});

Deno.test("threads engine: ENOSPC on a full file system, and the engine goes on", async () => {
  await enospc(createThreadsEngine);
});

Deno.test("threads engine: drainFd waits for every request in flight", async () => {
  await drainInFlight(createThreadsEngine, false);
});

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
