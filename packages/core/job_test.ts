import { deepStrictEqual as assertEquals, ok as assert } from "node:assert";
import { BlockError } from "./errors.ts";
import type { Graph } from "./graph.ts";
import { findJob, Job, queryJobs } from "./job.ts";
import { RateLimit } from "./job_ratelimit.ts";
import { JOB_VERBS, type JobVerb, verbAllowed } from "./job_status.ts";
import { JobTxn } from "./job_txn.ts";
import { assertRejects, assertThrows, testGraph } from "./test_util.ts";

interface StepOptions {
  steps?: number;
  stepMs?: number;
  failAt?: number;
  prepareFails?: boolean;
  autoFinalize?: boolean;
  autoDismiss?: boolean;
  txn?: JobTxn;
  internal?: boolean;
}

/** Does `steps` steps of `stepMs` each (sleeping through a pause point); fails at `failAt`. */
class StepJob extends Job {
  readonly log: string[] = [];
  readonly #o: StepOptions;
  constructor(graph: Graph, id: string | undefined, o: StepOptions = {}) {
    super({ graph, id, type: "create", ...o });
    this.#o = o;
  }
  protected override async run(): Promise<void> {
    const steps = this.#o.steps ?? 3;
    this.progressSetRemaining(steps);
    for (let i = 0; i < steps; i++) {
      await this.sleep((this.#o.stepMs ?? 1) * 1e6);
      if (this.isCancelled) return;
      if (i === this.#o.failAt) throw new BlockError("EIO");
      this.progressUpdate(1);
    }
  }
  protected override prepare(): void {
    this.log.push("prepare");
    if (this.#o.prepareFails) throw new BlockError("EIO", "prepare failed");
  }
  protected override commit(): void {
    this.log.push("commit");
  }
  protected override abort(): void {
    this.log.push("abort");
  }
  protected override clean(): Promise<void> {
    this.log.push("clean");
    return Promise.resolve();
  }
}

/** Copies one step, becomes ready and waits there; cancel before ready is forced. */
class ReadyJobBase extends Job {
  pivoted = false;
  protected shouldComplete = false;
  constructor(graph: Graph, id: string, o: { autoFinalize?: boolean; autoDismiss?: boolean } = {}) {
    super({ graph, id, type: "mirror", ...o });
  }
  protected override async run(): Promise<void> {
    this.progressSetRemaining(1);
    await this.pausePoint();
    if (this.isCancelled) return;
    this.progressUpdate(1);
    this.transitionToReady();
    while (!this.shouldComplete && !this.cancelRequested) {
      await this.suspend();
      if (this.isCancelled) return;
    }
  }
  protected override onCancel(force: boolean): boolean {
    return force || !this.isReady;
  }
  protected override commit(): void {
    this.pivoted = !this.cancelRequested;
  }
}

class ReadyJob extends ReadyJobBase {
  protected override onComplete(): void {
    this.shouldComplete = true;
    this.enter();
  }
}

/** Runs until the test opens its gate, passing no pause point. */
class GateJob extends Job {
  open!: () => void;
  readonly #gate = new Promise<void>((r) => this.open = r);
  constructor(graph: Graph, id: string, o: { autoFinalize?: boolean } = {}) {
    super({ graph, id, type: "create", ...o });
  }
  protected override run(): Promise<void> {
    return this.#gate;
  }
}

function recorder(g: Graph) {
  const events: { event: string; data: Record<string, unknown> }[] = [];
  g.events.on("*", (e) => events.push({ event: e.event, data: e.data }));
  return {
    events,
    statuses: (id: string) =>
      events.filter((e) => e.event === "JOB_STATUS_CHANGE" && e.data["id"] === id)
        .map((e) => e.data["status"]),
  };
}

function verbError(job: Job, verb: JobVerb): string {
  return `Job '${job.id}' in state '${job.status}' cannot accept command verb '${verb}'`;
}

async function callVerb(job: Job, verb: JobVerb): Promise<void> {
  switch (verb) {
    case "cancel":
      return await job.cancel();
    case "pause":
      return job.pause();
    case "resume":
      return job.resume();
    case "complete":
      return job.complete();
    case "finalize":
      return await job.finalize();
    case "dismiss":
      return await job.dismiss();
    default:
      throw new Error(`verb ${verb} is not a Job method`);
  }
}

/** Calls every verb the job's state refuses and checks QEMU's error text for each. */
async function checkRefusedVerbs(job: Job): Promise<number> {
  let refused = 0;
  for (const verb of JOB_VERBS) {
    if (verb === "set-speed" || verb === "change" || verbAllowed(verb, job.status)) continue;
    const text = verb === "resume" && !job.userPaused
      ? "Can't resume a job that was not paused"
      : verbError(job, verb);
    await assertRejects(() => callVerb(job, verb), BlockError, text);
    refused++;
  }
  return refused;
}

Deno.test("Job happy path emits created, running, waiting, pending, concluded, null", async () => {
  const g = testGraph();
  const rec = recorder(g);
  const job = new StepJob(g, "job0");
  assertEquals(job.status, "created");
  assert(findJob(g, "job0") === job);
  job.start();
  await job.waitForStatus("null");
  assertEquals(rec.statuses("job0"), [
    "created",
    "running",
    "waiting",
    "pending",
    "concluded",
    "null",
  ]);
  assertEquals(job.log, ["prepare", "commit", "clean"]);
  assertEquals([job.progressCurrent, job.progressTotal], [3, 3]);
  assertEquals(job.error, null);
  assertEquals(findJob(g, "job0"), undefined);
  assertEquals(g.jobs().length, 0);
  await g.closeAll();
});

Deno.test("Job ids: required, well-formed, unique among jobs, apart from node names", async () => {
  const g = testGraph();
  const n = await g.open({ driver: "ram", "node-name": "disk0" }, "t");
  assertThrows(() => new StepJob(g, undefined), BlockError, "An explicit job ID is required");
  assertThrows(() => new StepJob(g, "0bad"), BlockError, "Invalid job ID '0bad'");
  assertThrows(
    () => new StepJob(g, "x", { internal: true }),
    BlockError,
    "Cannot specify job ID for internal job",
  );
  const a = new StepJob(g, "disk0");
  assertThrows(() => new StepJob(g, "disk0"), BlockError, "Job ID 'disk0' already in use");
  const rec = recorder(g);
  const internal = new StepJob(g, undefined, { internal: true });
  assertEquals(queryJobs(g).map((j) => j.id), ["disk0"]);
  internal.start();
  await internal.waitForStatus("null");
  assertEquals(rec.events.length, 0);
  await a.cancel();
  assertEquals(a.status, "null");
  await n.unref("t");
  await g.closeAll();
});

Deno.test("Job pause and resume: user pause stops at the next pause point", async () => {
  const g = testGraph();
  const rec = recorder(g);
  const job = new StepJob(g, "p", { steps: 200, stepMs: 1 });
  job.start();
  assertThrows(() => job.resume(), BlockError, "Can't resume a job that was not paused");
  job.pause();
  assertThrows(() => job.pause(), BlockError, "Job is already paused");
  await job.waitForStatus("paused");
  assert(job.userPaused && job.paused && !job.busy);
  assertEquals(job.pauseCount, 1);
  const done = job.progressCurrent;
  await new Promise((r) => setTimeout(r, 15));
  assertEquals(job.progressCurrent, done);
  assertEquals(await checkRefusedVerbs(job), 3);
  job.resume();
  await job.waitForStatus("null");
  assertEquals(job.progressCurrent, 200);
  assertEquals(rec.statuses("p").slice(0, 4), ["created", "running", "paused", "running"]);
  await g.closeAll();
});

Deno.test("Job paused while created pauses at its first pause point after start", async () => {
  const g = testGraph();
  const rec = recorder(g);
  const job = new StepJob(g, "c");
  assertEquals(await checkRefusedVerbs(job), 3);
  job.pause();
  job.start();
  await job.waitForStatus("paused");
  assertEquals(job.progressCurrent, 0);
  job.resume();
  await job.waitForStatus("null");
  assertEquals(rec.statuses("c"), [
    "created",
    "running",
    "paused",
    "running",
    "waiting",
    "pending",
    "concluded",
    "null",
  ]);
  await g.closeAll();
});

Deno.test("Job ready: user pause gives standby, complete finishes with the final step", async () => {
  const g = testGraph();
  const rec = recorder(g);
  const job = new ReadyJob(g, "m");
  job.start();
  await job.waitForStatus("ready");
  assertEquals(await checkRefusedVerbs(job), 2);
  job.pause();
  await job.waitForStatus("standby");
  assertEquals(await checkRefusedVerbs(job), 2);
  job.resume();
  await job.waitForStatus("ready");
  job.complete();
  await job.waitForStatus("null");
  assert(job.pivoted);
  assertEquals(rec.statuses("m"), [
    "created",
    "running",
    "ready",
    "standby",
    "ready",
    "waiting",
    "pending",
    "concluded",
    "null",
  ]);
  await g.closeAll();
});

Deno.test("Job soft cancel in ready completes without the final step", async () => {
  const g = testGraph();
  const rec = recorder(g);
  const job = new ReadyJob(g, "m");
  job.start();
  await job.waitForStatus("ready");
  await job.cancel();
  assert(job.cancelRequested && !job.isCancelled);
  await job.waitForStatus("null");
  assert(!job.pivoted);
  assertEquals(job.error, null);
  assertEquals(rec.statuses("m").slice(2), ["ready", "waiting", "pending", "concluded", "null"]);
  await g.closeAll();
});

Deno.test("Job forced cancel in ready, and any cancel before ready, abort", async () => {
  const g = testGraph();
  const rec = recorder(g);
  const forced = new ReadyJob(g, "f");
  forced.start();
  await forced.waitForStatus("ready");
  await forced.cancel(true);
  await forced.waitForStatus("null");
  assertEquals(rec.statuses("f").slice(2), ["ready", "aborting", "concluded", "null"]);
  assertEquals(forced.error?.code, "ECANCELED");
  assertEquals(forced.error?.message, "Operation canceled");
  const early = new ReadyJob(g, "e");
  early.pause();
  early.start();
  await early.waitForStatus("paused");
  await early.cancel();
  assert(early.isCancelled);
  await early.waitForStatus("null");
  assertEquals(rec.statuses("e"), [
    "created",
    "running",
    "paused",
    "running",
    "aborting",
    "concluded",
    "null",
  ]);
  const never = new ReadyJob(g, "n");
  await never.cancel();
  assertEquals(rec.statuses("n"), ["created", "aborting", "concluded", "null"]);
  await g.closeAll();
});

Deno.test("Job complete is refused without a complete action or after a cancel request", async () => {
  const g = testGraph();
  const job = new ReadyJobBase(g, "m");
  job.start();
  await job.waitForStatus("ready");
  assertThrows(() => job.complete(), BlockError, "The active block job 'm' cannot be completed");
  await job.cancel(true);
  await job.waitForStatus("null");
  await g.closeAll();
});

Deno.test("Job failure goes aborting, concluded with the error; dismiss removes it", async () => {
  const g = testGraph();
  const rec = recorder(g);
  const job = new StepJob(g, "f", { failAt: 1, autoDismiss: false });
  job.start();
  await job.waitForStatus("concluded");
  assertEquals(rec.statuses("f"), ["created", "running", "aborting", "concluded"]);
  assertEquals(job.log, ["abort", "clean"]);
  assertEquals(job.info(), {
    id: "f",
    type: "create",
    status: "concluded",
    "current-progress": 1,
    "total-progress": 3,
    error: "Input/output error",
  });
  assertEquals(await checkRefusedVerbs(job), 5);
  await job.dismiss();
  assertEquals(job.status, "null");
  assertEquals(await checkRefusedVerbs(job), 6);
  await g.closeAll();
});

Deno.test("Job auto-finalize=false waits in pending until finalize", async () => {
  const g = testGraph();
  const rec = recorder(g);
  const job = new StepJob(g, "d", { autoFinalize: false });
  job.start();
  await job.waitForStatus("pending");
  assertEquals(job.log, []);
  assertEquals(await checkRefusedVerbs(job), 4);
  await job.finalize();
  assertEquals(job.status, "null");
  assertEquals(job.log, ["prepare", "commit", "clean"]);
  assertEquals(rec.statuses("d"), [
    "created",
    "running",
    "waiting",
    "pending",
    "concluded",
    "null",
  ]);
  await g.closeAll();
});

Deno.test("Job resume of a user-paused job that finished running names the state", async () => {
  const g = testGraph();
  const job = new GateJob(g, "g", { autoFinalize: false });
  job.start();
  job.pause();
  job.open();
  await job.waitForStatus("pending");
  assert(job.userPaused);
  assertThrows(() => job.resume(), BlockError, verbError(job, "resume"));
  await job.cancel();
  assertEquals(job.status, "null");
  await g.closeAll();
});

Deno.test("JobTxn: jobs wait for each other, then finalize together", async () => {
  const g = testGraph();
  const rec = recorder(g);
  const txn = new JobTxn();
  const a = new StepJob(g, "a", { steps: 1, txn });
  const b = new StepJob(g, "b", { steps: 1, txn, autoFinalize: false });
  assert(txn.jobs.length === 2 && txn.jobs[0] === b && txn.jobs[1] === a);
  a.start();
  await a.waitForStatus("waiting");
  assertEquals(b.status, "created");
  b.start();
  await b.waitForStatus("pending");
  assertEquals(a.status, "pending");
  await a.finalize();
  assertEquals([a.status, b.status], ["null", "null"]);
  assertEquals(a.log, ["prepare", "commit", "clean"]);
  assertEquals(b.log, ["prepare", "commit", "clean"]);
  assertEquals(rec.statuses("a"), [
    "created",
    "running",
    "waiting",
    "pending",
    "concluded",
    "null",
  ]);
  assertEquals(txn.jobs.length, 0);
  await g.closeAll();
});

Deno.test("JobTxn: one job fails, the others are force-cancelled and abort", async () => {
  const g = testGraph();
  const rec = recorder(g);
  const txn = new JobTxn();
  const a = new StepJob(g, "a", { failAt: 0, txn });
  const b = new StepJob(g, "b", { steps: 10_000, txn });
  b.start();
  a.start();
  await Promise.all([a.waitForStatus("null"), b.waitForStatus("null")]);
  assertEquals(a.error?.message, "Input/output error");
  assertEquals(b.error?.code, "ECANCELED");
  assert(b.isCancelled);
  assertEquals(a.log, ["abort", "clean"]);
  assertEquals(b.log, ["abort", "clean"]);
  assertEquals(rec.statuses("b").slice(-3), ["aborting", "concluded", "null"]);
  assert(b.progressCurrent < 10_000);
  await g.closeAll();
});

Deno.test("JobTxn: a failed prepare aborts every job of the transaction", async () => {
  const g = testGraph();
  const rec = recorder(g);
  const txn = new JobTxn();
  const a = new StepJob(g, "a", { steps: 1, txn, prepareFails: true });
  const b = new StepJob(g, "b", { steps: 1, txn });
  a.start();
  b.start();
  await Promise.all([a.waitForStatus("null"), b.waitForStatus("null")]);
  assertEquals(b.log, ["prepare", "abort", "clean"]);
  assertEquals(a.log, ["prepare", "abort", "clean"]);
  assertEquals(a.error?.message, "prepare failed");
  assertEquals(b.error?.code, "ECANCELED");
  assertEquals(rec.statuses("a").slice(-4), ["pending", "aborting", "concluded", "null"]);
  assertEquals(rec.statuses("b").slice(-4), ["pending", "aborting", "concluded", "null"]);
  await g.closeAll();
});

Deno.test("JobTxn: cancelling a waiting job cancels the running one", async () => {
  const g = testGraph();
  const txn = new JobTxn();
  const a = new StepJob(g, "a", { steps: 1, txn });
  const b = new StepJob(g, "b", { steps: 10_000, txn });
  a.start();
  b.start();
  await a.waitForStatus("waiting");
  await a.cancel();
  assertEquals([a.status, b.status], ["null", "null"]);
  assertEquals(a.log, ["abort", "clean"]);
  assertEquals(b.log, ["abort", "clean"]);
  await g.closeAll();
});

Deno.test("Graph.closeAll cancels running, pending and concluded jobs", async () => {
  const g = testGraph();
  const running = new StepJob(g, "r", { steps: 10_000 });
  const pending = new StepJob(g, "p", { autoFinalize: false });
  const concluded = new StepJob(g, "c", { autoDismiss: false });
  const created = new StepJob(g, "n");
  for (const j of [running, pending, concluded]) j.start();
  await pending.waitForStatus("pending");
  await concluded.waitForStatus("concluded");
  await g.closeAll();
  for (const j of [running, pending, concluded, created]) assertEquals(j.status, "null");
  assertEquals(running.log, ["abort", "clean"]);
  assertEquals(pending.log, ["abort", "clean"]);
  assertEquals(concluded.log, ["prepare", "commit", "clean"]);
  assertEquals(g.jobs(), []);
});

Deno.test("Job.sleep is cut short by enter and skipped when force-cancelled", async () => {
  const g = testGraph();
  class Sleeper extends Job {
    woke = false;
    constructor() {
      super({ graph: g, id: "s", type: "create" });
    }
    protected override async run(): Promise<void> {
      await this.sleep(3600e9);
      this.woke = true;
      await this.sleep(3600e9);
    }
  }
  const job = new Sleeper();
  job.start();
  await new Promise((r) => setTimeout(r, 1));
  assert(!job.busy && !job.woke);
  job.enter();
  await new Promise((r) => setTimeout(r, 1));
  assert(job.woke);
  await job.cancel(true);
  await job.waitForStatus("null");
  await g.closeAll();
});

Deno.test("RateLimit stretches the slice by the excess and resets after it", () => {
  let now = 1_000;
  const limit = new RateLimit(() => now);
  assertEquals(limit.calculateDelay(1 << 30), 0);
  limit.setSpeed(1_000_000, 100_000_000);
  assertEquals(limit.calculateDelay(99_999), 0);
  assertEquals(limit.calculateDelay(100_001), 200_000_000);
  now += 50_000_000;
  assertEquals(limit.calculateDelay(0), 150_000_000);
  now += 150_000_001;
  assertEquals(limit.calculateDelay(10), 0);
});
