import { deepStrictEqual as assertEquals, ok as assert } from "node:assert";
import { BlockJob, type BlockJobOptions, queryBlockJobs } from "./block_job.ts";
import { BlockError } from "./errors.ts";
import type { Graph } from "./graph.ts";
import type { Node } from "./node.ts";
import { Perm } from "./permissions.ts";
import { assertRejects, assertThrows, pattern, ramFaults, testGraph } from "./test_util.ts";

const CHUNK = 4096;

type CopyOptions = Omit<BlockJobOptions, "graph" | "type" | "node"> & {
  target: Node;
  ready?: boolean;
};

/** Copies `node` to `target` chunk by chunk; with `ready`, waits in READY for complete. */
class CopyJob extends BlockJob {
  readonly target: Node;
  readonly #ready: boolean;
  #complete = false;
  constructor(graph: Graph, node: Node, o: CopyOptions) {
    super({ graph, type: "mirror", node, perm: Perm.CONSISTENT_READ, ...o });
    this.target = o.target;
    this.#ready = o.ready ?? false;
    try {
      this.addNode("target", o.target, Perm.WRITE, Perm.CONSISTENT_READ);
    } catch (e) {
      void this.earlyFail();
      throw e;
    }
  }
  protected override async run(): Promise<void> {
    const src = this.nodes[0]!;
    const len = src.getLength();
    this.progressSetRemaining(len);
    const buf = new Uint8Array(CHUNK);
    for (let off = 0; off < len; off += CHUNK) {
      await this.ratelimitSleep();
      if (this.isCancelled) return;
      await src.read(off, buf);
      await this.target.write(off, buf);
      this.progressUpdate(CHUNK);
      this.ratelimitProcessed(CHUNK);
    }
    if (!this.#ready) return;
    this.transitionToReady();
    while (!this.#complete && !this.cancelRequested) {
      await this.suspend();
      if (this.isCancelled) return;
    }
  }
  protected override onCancel(force: boolean): boolean {
    return force || !this.isReady;
  }
  protected override onComplete(): void {
    this.#complete = true;
    this.enter();
  }
}

async function setup(size = 64 * 1024, delayMs = 0) {
  const g = testGraph();
  const src = await g.open({ driver: "ram", "node-name": "src", size, "delay-ms": delayMs }, "t");
  const tgt = await g.open({ driver: "ram", "node-name": "tgt", size, "delay-ms": delayMs }, "t");
  g.addMonitorNode(src, "t");
  g.addMonitorNode(tgt, "t");
  await src.write(0, pattern(size, 0xab));
  const events: { event: string; data: Record<string, unknown> }[] = [];
  g.events.on("*", (e) => {
    if (e.event !== "JOB_STATUS_CHANGE") events.push({ event: e.event, data: e.data });
  });
  return { g, src, tgt, events };
}

function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const t = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms`)), ms);
  });
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
}

Deno.test("BlockJob copies, emits BLOCK_JOB_COMPLETED and drops its edges", async () => {
  const { g, src, tgt, events } = await setup();
  const job = new CopyJob(g, src, { id: "job0", target: tgt });
  assertEquals(src.parents.map((c) => c.describe()), ["mirror job 'job0' (as 'main node')"]);
  assert(tgt.parents[0]!.stayAtNode);
  assertEquals(queryBlockJobs(g), [{
    type: "mirror",
    device: "job0",
    len: 0,
    offset: 0,
    busy: false,
    paused: true,
    speed: 0,
    "io-status": "ok",
    ready: false,
    status: "created",
    "auto-finalize": true,
    "auto-dismiss": true,
  }]);
  job.start();
  await job.waitForStatus("null");
  const got = new Uint8Array(64 * 1024);
  await tgt.read(0, got);
  assert(got.every((b) => b === 0xab));
  assertEquals(events, [{
    event: "BLOCK_JOB_COMPLETED",
    data: { type: "mirror", device: "job0", len: 65536, offset: 65536, speed: 0 },
  }]);
  assertEquals([src.parents.length, tgt.parents.length, src.refcount, tgt.refcount], [0, 0, 1, 1]);
  await g.closeAll();
});

Deno.test("BlockJob ids default to the block device, else the node name", async () => {
  const { g, src, tgt } = await setup();
  const blk = g.createBackend({ name: "drive0", perm: Perm.CONSISTENT_READ, shared: Perm.ALL });
  await blk.insertRoot(src);
  const a = new CopyJob(g, src, { target: tgt });
  assertEquals(a.id, "drive0");
  await a.cancel();
  const b = new CopyJob(g, tgt, { target: src });
  assertEquals(b.id, "tgt");
  assertEquals(b.describe(), "mirror job 'tgt'");
  await b.cancel();
  await blk.unref();
  await g.closeAll();
});

Deno.test("BlockJob edges: permission conflicts name the job; a failed create leaves nothing", async () => {
  const { g, src, tgt } = await setup();
  const job = new CopyJob(g, src, { id: "job0", target: tgt });
  const blk = g.createBackend({ perm: Perm.CONSISTENT_READ | Perm.WRITE, shared: Perm.ALL });
  const e = await assertRejects(() => blk.insertRoot(tgt), BlockError, "Permission conflict");
  assert(e.message.includes(
    "unshared by mirror job 'job0' (uses node 'tgt' as 'target' child). To release it, " +
      "cancel job 'job0' (block-job-cancel)",
  ));
  const statuses: unknown[] = [];
  g.events.on("JOB_STATUS_CHANGE", (ev) => statuses.push(ev.data["status"]));
  assertThrows(
    () => new CopyJob(g, src, { id: "job1", target: tgt }),
    BlockError,
    "Permission conflict on node 'tgt'",
  );
  assertEquals(statuses, ["created", "null"]);
  assertEquals(src.parents.length, 1);
  assertThrows(
    () => new CopyJob(g, src, { id: "job2", target: tgt, speed: -1 }),
    BlockError,
    "Parameter 'speed' expects a non-negative value",
  );
  await job.cancel();
  await blk.unref();
  await g.closeAll();
});

Deno.test("BlockJob pauses at its next pause point while its node is drained", async () => {
  const { g, src, tgt } = await setup(256 * 1024, 1);
  const job = new CopyJob(g, src, { id: "job0", target: tgt });
  job.start();
  await new Promise((r) => setTimeout(r, 5));
  assertEquals(job.status, "running");
  await g.drained([src], async () => {
    assertEquals(job.status, "paused");
    assert(!job.busy && !job.userPaused);
    assertEquals(job.queryBlockJob().paused, true);
    assertThrows(() => job.resume(), BlockError, "Can't resume a job that was not paused");
    const done = job.progressCurrent;
    await new Promise((r) => setTimeout(r, 10));
    assertEquals(job.progressCurrent, done);
  });
  await job.waitForStatus("null");
  assertEquals(job.progressCurrent, 256 * 1024);
  await g.closeAll();
});

Deno.test("Graph.closeAll cancels a running block job and then closes every node", async () => {
  const { g, src, tgt, events } = await setup(1 << 20, 1);
  const job = new CopyJob(g, src, { id: "job0", target: tgt });
  job.start();
  await new Promise((r) => setTimeout(r, 5));
  await g.closeAll();
  assertEquals(job.status, "null");
  assertEquals(g.nodes(), []);
  assertEquals(events.map((e) => e.event), ["BLOCK_JOB_CANCELLED"]);
  assert((events[0]!.data["offset"] as number) < 1 << 20);
});

Deno.test("blockdev-del is refused while a block job uses the node", async () => {
  const { g, src, tgt } = await setup();
  const job = new CopyJob(g, src, { id: "job0", target: tgt, autoDismiss: false });
  await assertRejects(
    () => g.blockdevDel("src"),
    BlockError,
    "Node 'src' is busy: block device is in use by block job: mirror",
  );
  job.start();
  await job.waitForStatus("concluded");
  await g.blockdevDel("src");
  assertEquals(g.findNode("src"), undefined);
  await job.dismiss();
  await g.closeAll();
});

Deno.test("BlockJob ready: BLOCK_JOB_READY; soft cancel completes, force cancel cancels", async () => {
  const { g, src, tgt, events } = await setup();
  const soft = new CopyJob(g, src, { id: "soft", target: tgt, ready: true });
  soft.start();
  await soft.waitForStatus("ready");
  assertEquals(soft.queryBlockJob().ready, true);
  await soft.cancel();
  await soft.waitForStatus("null");
  const hard = new CopyJob(g, src, { id: "hard", target: tgt, ready: true, speed: 1 << 30 });
  hard.start();
  await hard.waitForStatus("ready");
  await hard.cancel(true);
  await hard.waitForStatus("null");
  const progress = { len: 65536, offset: 65536 };
  assertEquals(events, [
    { event: "BLOCK_JOB_READY", data: { type: "mirror", device: "soft", ...progress, speed: 0 } },
    {
      event: "BLOCK_JOB_COMPLETED",
      data: { type: "mirror", device: "soft", ...progress, speed: 0 },
    },
    {
      event: "BLOCK_JOB_READY",
      data: { type: "mirror", device: "hard", ...progress, speed: 1 << 30 },
    },
    {
      event: "BLOCK_JOB_CANCELLED",
      data: { type: "mirror", device: "hard", ...progress, speed: 1 << 30 },
    },
  ]);
  await g.closeAll();
});

Deno.test("BlockJob failure and manual finalize: PENDING, then COMPLETED with the error", async () => {
  const { g, src, tgt, events } = await setup();
  const ok = new CopyJob(g, src, { id: "ok", target: tgt, autoFinalize: false });
  ok.start();
  await ok.waitForStatus("pending");
  assertEquals(events, [{ event: "BLOCK_JOB_PENDING", data: { type: "mirror", id: "ok" } }]);
  await ok.finalize();
  ramFaults.set("tgt", "EIO");
  try {
    const bad = new CopyJob(g, src, { id: "bad", target: tgt, autoDismiss: false });
    bad.start();
    await bad.waitForStatus("concluded");
    assertEquals(bad.queryBlockJob().error, "Input/output error");
    assertEquals(bad.queryBlockJob().offset, 0);
    await bad.dismiss();
  } finally {
    ramFaults.delete("tgt");
  }
  const all = events as { event: string; data: Record<string, unknown> }[];
  assertEquals(all.slice(1).map((e) => [e.event, e.data["device"], e.data["error"]]), [
    ["BLOCK_JOB_COMPLETED", "ok", undefined],
    ["BLOCK_JOB_COMPLETED", "bad", "Input/output error"],
  ]);
  await g.closeAll();
});

Deno.test("BlockJob set-speed: checked, shown, and a faster speed wakes a sleeping job", async () => {
  const { g, src, tgt } = await setup();
  const job = new CopyJob(g, src, { id: "job0", target: tgt, speed: 1 });
  job.start();
  await new Promise((r) => setTimeout(r, 5));
  assertEquals(job.progressCurrent, CHUNK);
  assertEquals(job.queryBlockJob().speed, 1);
  assertThrows(
    () => job.setSpeed(-5),
    BlockError,
    "Parameter 'speed' expects a non-negative value",
  );
  job.setSpeed(0);
  await withTimeout(job.waitForStatus("null"), 5000);
  assertEquals(job.progressCurrent, 64 * 1024);
  assertThrows(
    () => job.setSpeed(1),
    BlockError,
    "Job 'job0' in state 'null' cannot accept command verb 'set-speed'",
  );
  assertThrows(
    () => job.change({}),
    BlockError,
    "Job 'job0' in state 'null' cannot accept command verb 'change'",
  );
  await g.closeAll();
});

Deno.test("BlockJob error action stop: BLOCK_JOB_ERROR, user pause and io-status", async () => {
  const { g, src, tgt, events } = await setup();
  const job = new CopyJob(g, src, { id: "job0", target: tgt });
  const err = new BlockError("ENOSPC");
  assertEquals(job.errorAction("report", false, err), "report");
  assertEquals(job.errorAction("enospc", true, err), "stop");
  assert(job.userPaused);
  assertEquals(job.ioStatus, "nospace");
  assertEquals(job.errorAction("stop", false, new BlockError("EIO")), "stop");
  assertEquals(job.ioStatus, "nospace");
  assertEquals(events.map((e) => e.data), [
    { device: "job0", operation: "write", action: "report" },
    { device: "job0", operation: "read", action: "stop" },
    { device: "job0", operation: "write", action: "stop" },
  ]);
  job.resume();
  assertEquals([job.ioStatus, job.userPaused, job.pauseCount], ["ok", false, 1]);
  await job.cancel();
  await g.closeAll();
});
