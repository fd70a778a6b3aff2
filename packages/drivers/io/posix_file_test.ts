import { BlockError } from "@blockgraph/core";
import { assert, assertEquals, assertRejectsWith } from "../conformance/mod.ts";
import { withDir } from "./engine_testing.ts";
import { createThreadsEngine } from "./threads.ts";
import { createUringEngine } from "./uring.ts";
import {
  filesFor,
  type HostFiles,
  hostFiles,
  libcFiles,
  loadedNodeFs,
  loadNodeFs,
  nodeFiles,
} from "./posix_file.ts";

/** The open flags of `fd` as the kernel keeps them (octal in /proc/self/fdinfo). */
function fdFlags(fd: number): number {
  const info = Deno.readTextFileSync(`/proc/self/fdinfo/${fd}`);
  return parseInt(/flags:\s+([0-7]+)/.exec(info)![1]!, 8);
}

/** Runs `fn`, returning the BlockError it throws. */
function thrown(fn: () => unknown, what: string): BlockError {
  try {
    fn();
  } catch (e) {
    assert(e instanceof BlockError, `${what}: a BlockError, got ${String(e)}`);
    return e;
  }
  throw new Error(`${what}: nothing was thrown`);
}

for (const [name, get] of [["libc", libcFiles], ["node:fs", nodeFiles]] as const) {
  Deno.test(`${name} host files open, stat, truncate and close a file`, async () => {
    const files: HostFiles = await get();
    assertEquals(files.via, name, "via");
    await withDir(async (dir) => {
      const path = `${dir}/f.img`;
      const fd = files.open(path, { write: true, create: true, mode: 0o600 });
      assertEquals((await Deno.stat(path)).mode! & 0o777, 0o600, "mode of a created file");
      assertEquals(files.fstat(fd).size, 0, "empty");
      await files.ftruncate(fd, 3 * 1024 * 1024 + 1);
      const st = files.fstat(fd);
      assert(st.regular, "regular");
      assertEquals(st.size, 3 * 1024 * 1024 + 1, "size after ftruncate");
      assertEquals(st.blocks, (await Deno.stat(path)).blocks!, "blocks");
      await Deno.writeFile(path, new Uint8Array(8192).fill(1), { append: true });
      assert(files.fstat(fd).blocks >= 16, "blocks count what was written");
      await files.ftruncate(fd, 100);
      assertEquals((await Deno.stat(path)).size, 100, "shrunk");
      files.close(fd);
      const dirFd = files.open(dir, { write: false });
      assert(!files.fstat(dirFd).regular, "a directory is not regular");
      files.close(dirFd);
    });
  });

  Deno.test(`${name} host files fail with the errno, the call and a cause`, async () => {
    const files = await get();
    await withDir(async (dir) => {
      const missing = thrown(() => files.open(`${dir}/nope`, { write: false }), "missing");
      assertEquals(missing.code, "ENOENT", "missing file");
      assertEquals(missing.op, "open", "op");
      assert(missing.cause !== undefined, "cause");
      assertEquals(
        thrown(() => files.open(dir, { write: true }), "dir rw").code,
        "EISDIR",
        "rw dir",
      );
      const fd = files.open(dir, { write: false });
      files.close(fd);
      assertEquals(thrown(() => files.close(fd), "closed").code, "EBADF", "close twice");
      assertEquals(thrown(() => files.fstat(fd), "fstat").code, "EBADF", "fstat closed");
      const path = `${dir}/ro.img`;
      await Deno.writeFile(path, new Uint8Array(10));
      const ro = files.open(path, { write: false });
      await assertRejectsWith(files.ftruncate(ro, 0), "EINVAL", "ftruncate read-only");
      files.close(ro);
    });
  });
}

Deno.test("libc and node:fs host files open with the same flags", async () => {
  const node = await nodeFiles();
  await withDir(async (dir) => {
    const path = `${dir}/f.img`;
    await Deno.writeFile(path, new Uint8Array(4096));
    for (const how of [{ write: false }, { write: true }, { write: true, direct: true }]) {
      const a = libcFiles().open(path, how);
      const b = node.open(path, how);
      // O_ACCMODE, O_DIRECT and O_CLOEXEC; O_LARGEFILE differs by who opened it.
      const mask = 0o3 | 0o2000000 | (Deno.build.arch === "aarch64" ? 0o200000 : 0o40000);
      assertEquals(
        (fdFlags(a) & mask).toString(8),
        (fdFlags(b) & mask).toString(8),
        JSON.stringify(how),
      );
      libcFiles().close(a);
      node.close(b);
    }
  });
});

Deno.test("hostFiles prefers libc; the threads engine's files are node:fs's", async () => {
  assertEquals((await hostFiles()).via, "libc", "hostFiles here");
  assertEquals((await filesFor(null)).via, "libc", "no engine");
  const uring = createUringEngine({ direct: false });
  assertEquals((await uring.files()).via, "libc", "io_uring");
  await uring.release();
  const threads = createThreadsEngine({ direct: false });
  assertEquals((await filesFor(threads)).via, "node:fs", "threads");
  await threads.release();
  assert(loadedNodeFs() === await loadNodeFs(), "node:fs loaded once");
});
