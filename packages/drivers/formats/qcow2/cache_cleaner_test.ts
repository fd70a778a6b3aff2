import { assertEquals } from "../../conformance/mod.ts";
import { CacheCleaner } from "./cache_cleaner.ts";
import { Mutex } from "./locks.ts";

Deno.test("CacheCleaner cleans under the lock, joins a tick still waiting, and restarts only on a new interval", async () => {
  const lock = new Mutex();
  let calls = 0;
  const cleaner = new CacheCleaner(lock, () => [{ cleanUnused: () => ++calls }]);
  assertEquals(cleaner.interval, 0, "stopped at first");
  // While the lock is held, ticks wait; two of them are one cleaning.
  let release!: () => void;
  const held = lock.run(() => new Promise<void>((r) => (release = r)));
  const a = cleaner.clean();
  const b = cleaner.clean();
  await new Promise((r) => setTimeout(r, 0));
  assertEquals(calls, 0, "nothing while the lock is held");
  release();
  await Promise.all([held, a, b]);
  assertEquals(calls, 1, "the waiting ticks joined");
  await cleaner.clean();
  assertEquals(calls, 2, "a later tick cleans again");
  // A 1 s interval arms an unref'd timer; the same interval again keeps it, 0 stops it.
  cleaner.setInterval(1);
  cleaner.setInterval(1);
  assertEquals(cleaner.interval, 1);
  cleaner.setInterval(0);
  assertEquals(cleaner.interval, 0);
  cleaner.stop();
});

Deno.test("CacheCleaner arms its timer when a cache first loads something, not before", async () => {
  let calls = 0;
  const cleaner = new CacheCleaner(new Mutex(), () => [{ cleanUnused: () => ++calls }]);
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
  // A 20 ms interval (the option takes whole seconds; the class takes any).
  cleaner.setInterval(0.02);
  await sleep(100);
  assertEquals(calls, 0, "no tick before a cache has loaded anything");
  cleaner.wake();
  for (let waited = 0; calls === 0 && waited < 5000; waited += 10) await sleep(10);
  cleaner.stop();
  assertEquals(calls > 0, true, "ticks once woken");
  const after = calls;
  await sleep(100);
  assertEquals(calls, after, "no tick after stop");
  // Closing: a load during the close (bitmaps stored, caches written back) arms nothing.
  const closing = new CacheCleaner(new Mutex(), () => [{ cleanUnused: () => ++calls }]);
  closing.setInterval(0.02);
  closing.dispose();
  closing.wake();
  closing.setInterval(0.03);
  await sleep(100);
  assertEquals(calls, after, "no tick once disposed");
});

Deno.test("CacheCleaner's timer does not keep the process running", async () => {
  // A process whose only pending work is a woken cleaner with a 30 s interval exits at once.
  const url = (f: string) => new URL(f, import.meta.url).href;
  const code = `
    import { CacheCleaner } from "${url("./cache_cleaner.ts")}";
    import { Mutex } from "${url("./locks.ts")}";
    const c = new CacheCleaner(new Mutex(), () => []);
    c.setInterval(30);
    c.wake();
  `;
  const t0 = performance.now();
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["eval", "--no-config", code],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const ms = performance.now() - t0;
  assertEquals(out.success, true, new TextDecoder().decode(out.stderr));
  assertEquals(ms < 15_000, true, `the process took ${ms} ms to exit`);
});
