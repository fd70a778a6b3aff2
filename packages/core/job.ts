/**
 * Jobs: the one state machine every long-running operation (mirror, backup, stream, commit,
 * create) runs on, with QEMU's states, transitions, verbs and events.
 *
 * A subclass implements `run()`, calling {@link Job.pausePoint} (or {@link Job.sleep} /
 * {@link Job.suspend}) between chunks of work, and may implement `prepare`, `commit`,
 * `abort` and `clean` for the end. Each transition emits `JOB_STATUS_CHANGE` on the graph's
 * event bus; the flow is created, running, (paused/ready/standby), waiting, pending,
 * concluded, null, or through aborting after an error or a forced cancel.
 *
 * @module
 */

import { BlockError } from "./errors.ts";
import type { Graph, GraphJob } from "./graph.ts";
import { JobCoroutine } from "./job_coroutine.ts";
import { type JobInfo, type JobOptions, JobState } from "./job_state.ts";
import { JobTxn } from "./job_txn.ts";

type Hook = (() => Promise<void> | void) | undefined;

/**
 * The base of every job. States and verbs follow QEMU's `job.c`: an illegal transition is a
 * bug and throws an Error; a verb the state does not accept throws a BlockError (EPERM) with
 * QEMU's text.
 */
export abstract class Job extends JobState implements GraphJob {
  #txn: JobTxn | null;
  readonly #co: JobCoroutine;
  #pauseCount = 1;
  #userPaused = false;
  #paused = true;
  #cancelled = false;
  #forceCancel = false;
  #released = false;

  /**
   * Creates the job in state `created` and registers it with the graph. Throws (EINVAL /
   * EEXIST) with QEMU's text for a bad or duplicate id.
   */
  constructor(options: JobOptions) {
    super(options);
    const graph = options.graph;
    this.#co = new JobCoroutine(() => graph.notifyIdle());
    graph.addJob(this);
    this.#txn = options.txn ?? new JobTxn();
    this.#txn.add({
      job: this,
      moveToPending: () => {
        this.transition("pending");
        if (!this.autoFinalize) this.onPending?.();
      },
      prepare: () => this.#prepareStep(),
      finalize: () => this.#finalizeSingle(),
      forceCancel: () => this.#cancelAsync(true),
      finishSync: () => this.#finishSync(),
    });
  }

  // ---------------------------------------------------------------- what subclasses implement

  /** The job's work. Throw to fail; return when done or when {@link Job.isCancelled}. */
  protected abstract run(): Promise<void>;
  /** Runs before the transaction commits; throwing aborts every job of the transaction. */
  protected prepare?(): Promise<void> | void;
  /** Makes a successful job's result permanent (after every job's `prepare` succeeded). */
  protected commit?(): Promise<void> | void;
  /** Undoes a failed or cancelled job's work. */
  protected abort?(): Promise<void> | void;
  /** Runs after `commit` or `abort`, either way. */
  protected clean?(): Promise<void> | void;
  /** Releases what the job holds (its node edges); runs once, after `clean` or on dismiss. */
  protected release?(): Promise<void> | void;
  /** Decides whether a cancel request is forced; without it every cancel is forced. */
  protected onCancel?(force: boolean): boolean;
  /** Acts on the `complete` verb (a job without it cannot be completed). */
  protected onComplete?(): void;
  /** Called at a pause point before the job pauses. */
  protected onPause?(): void;
  /** Called at a pause point after the job resumed. */
  protected onResume?(): void;
  /** Called when the user resumes the job (or a cancel lifts a user pause). */
  protected onUserResume?(): void;
  /** Called after the job became ready. */
  protected onReady?(): void;
  /** Called after the job became pending, when `autoFinalize` is off. */
  protected onPending?(): void;
  /** Called once the job is finalized, before it concludes (not for jobs never started). */
  protected onFinalized?(cancelled: boolean): void;
  /** Whether the job still has work in flight although it is not busy (drain). */
  protected drainedPoll?(): boolean;

  // ---------------------------------------------------------------- state

  /** The transaction the job is in; `null` once finalized or dismissed. */
  get txn(): JobTxn | null {
    return this.#txn;
  }

  /** Whether `run()` is executing (not blocked in a pause point, sleep or suspend). */
  get busy(): boolean {
    return this.#co.busy;
  }

  /** Whether the job is stopped at a pause point. */
  get paused(): boolean {
    return this.#paused;
  }

  /** User pauses plus internal pauses (drained sections) in force. */
  get pauseCount(): number {
    return this.#pauseCount;
  }

  /** Whether the user paused the job. */
  get userPaused(): boolean {
    return this.#userPaused;
  }

  /** Whether the job was started. */
  get started(): boolean {
    return this.#co.started;
  }

  /** Whether the job was force-cancelled: `run()` should stop at once (`job_is_cancelled`). */
  get isCancelled(): boolean {
    return this.#forceCancel;
  }

  /** Whether any cancel was requested, soft or forced (`job_cancel_requested`). */
  get cancelRequested(): boolean {
    return this.#cancelled;
  }

  // ---------------------------------------------------------------- running

  /** Starts `run()` (created → running). */
  start(): void {
    if (this.#co.started || this.status !== "created") {
      throw new Error(`Job '${this.id}' cannot be started in state '${this.status}'`);
    }
    this.#co.start();
    this.#pauseCount--;
    this.#paused = false;
    this.transition("running");
    void this.#entry();
  }

  async #entry(): Promise<void> {
    await this.pausePoint();
    try {
      await this.run();
    } catch (e) {
      this.recordError(e);
    }
    this.#co.finish();
    await this.#completed();
  }

  /** Moves a running job to ready and runs the ready hook (BLOCK_JOB_READY). */
  protected transitionToReady(): void {
    this.transition("ready");
    this.onReady?.();
  }

  /**
   * Where `run()` may be paused: blocks while the job is paused (by the user or a drained
   * section) unless it was force-cancelled. Check {@link Job.isCancelled} afterwards.
   */
  async pausePoint(): Promise<void> {
    if (!this.#co.started) throw new Error(`Job '${this.id}': pause point before start`);
    if (this.#pauseCount === 0 || this.#forceCancel) return;
    this.onPause?.();
    if (this.#pauseCount > 0 && !this.#forceCancel) {
      const status = this.status;
      this.transition(status === "ready" ? "standby" : "paused");
      this.#paused = true;
      await this.#co.yield(null);
      this.#paused = false;
      this.transition(status);
    }
    this.onResume?.();
  }

  /**
   * Sleeps `ns` nanoseconds (rate limiting), then passes a pause point. Returns at once when
   * force-cancelled; {@link Job.enter} or a pause cuts the sleep short.
   */
  async sleep(ns: number): Promise<void> {
    if (this.#forceCancel) return;
    if (this.#pauseCount === 0) await this.#co.yield(Math.max(0, ns) / 1e6);
    await this.pausePoint();
  }

  /**
   * Waits until something calls {@link Job.enter} (an event the job waits for), then
   * passes a pause point (QEMU's `job_yield`). Returns at once when force-cancelled.
   */
  async suspend(): Promise<void> {
    if (this.#forceCancel) return;
    if (this.#pauseCount === 0) await this.#co.yield(null);
    await this.pausePoint();
  }

  /** Wakes the job if it is waiting in a pause point, sleep or suspend. */
  enter(): void {
    this.#co.enter();
  }

  /** Wakes the job only if it is sleeping on a timer (a speed change takes effect now). */
  protected enterIfSleeping(): void {
    this.#co.enter(() => this.#co.sleeping);
  }

  // ---------------------------------------------------------------- verbs

  /** Adds an internal pause (a drained section); the job stops at its next pause point. */
  pauseInternal(): void {
    this.#pauseCount++;
    if (!this.#paused) this.enter();
  }

  /** Lifts an internal pause. */
  resumeInternal(): void {
    if (this.#pauseCount <= 0) throw new Error(`Job '${this.id}' resumed more than paused`);
    if (--this.#pauseCount > 0) return;
    this.#co.enter(() => !this.#co.sleeping);
  }

  /** The `pause` verb (job-pause): a user pause, at most one at a time. */
  pause(): void {
    this.applyVerb("pause");
    if (this.#userPaused) throw new BlockError("EBUSY", "Job is already paused");
    this.#userPaused = true;
    this.pauseInternal();
  }

  /** Pauses the job as if the user had (an error policy said stop), unless the user did. */
  protected pauseAsUser(): void {
    if (this.#userPaused) return;
    this.pauseInternal();
    this.#userPaused = true;
  }

  /** The `resume` verb (job-resume): lifts the user pause. */
  resume(): void {
    if (!this.#userPaused || this.#pauseCount <= 0) {
      throw new BlockError("EINVAL", "Can't resume a job that was not paused");
    }
    this.applyVerb("resume");
    this.onUserResume?.();
    this.#userPaused = false;
    this.resumeInternal();
  }

  /** The `complete` verb (job-complete): asks a ready job to finish (a mirror pivots). */
  complete(): void {
    this.applyVerb("complete");
    if (this.#cancelled || !this.onComplete) {
      throw new BlockError("ENOTSUP", `The active block job '${this.id}' cannot be completed`);
    }
    this.onComplete();
  }

  /**
   * The `cancel` verb (job-cancel). A forced cancel aborts; a soft one (allowed only where
   * `onCancel` says so, e.g. a ready mirror) lets the job finish without its final step.
   * Resolves once the request has been acted on, not when the job has finished.
   */
  cancel(force = false): Promise<void> {
    try {
      this.applyVerb("cancel");
    } catch (e) {
      return Promise.reject(e);
    }
    return this.#cancel(force);
  }

  /** The `finalize` verb (job-finalize): finalizes the pending transaction. */
  finalize(): Promise<void> {
    try {
      this.applyVerb("finalize");
    } catch (e) {
      return Promise.reject(e);
    }
    return this.#txn!.finalize();
  }

  /** The `dismiss` verb (job-dismiss): removes a concluded job. */
  dismiss(): Promise<void> {
    try {
      this.applyVerb("dismiss");
    } catch (e) {
      return Promise.reject(e);
    }
    return this.#dismiss();
  }

  /** Dismisses a job that failed during creation (created → null). */
  earlyFail(): Promise<void> {
    if (this.status !== "created") {
      throw new Error(`Job '${this.id}' cannot fail early in state '${this.status}'`);
    }
    return this.#dismiss();
  }

  /**
   * Force-cancels the job and resolves once it is gone (null), dismissing it if it stays
   * concluded: what `Graph.closeAll` does to every job.
   */
  async cancelAndWait(): Promise<void> {
    const settled = () => this.status === "concluded" || this.status === "null";
    if (!settled()) await this.#cancel(true);
    while (!settled()) {
      this.#co.enter();
      await this.nextTransition();
    }
    if (this.status === "concluded") await this.#dismiss();
  }

  async #cancel(force: boolean): Promise<void> {
    if (this.status === "concluded") return this.#dismiss();
    this.#cancelAsync(force);
    if (!this.#co.started) {
      // A job that never ran has nothing to finish: any cancel of it is forced.
      this.#cancelled = this.#forceCancel = true;
      await this.#completed();
    } else if (this.#co.deferred) {
      if (this.#forceCancel && this.#txn) await this.#txn.jobFailed(this);
    } else this.#co.enter();
  }

  #cancelAsync(force: boolean): void {
    force = this.onCancel ? this.onCancel(force) : true;
    if (this.#userPaused) {
      this.onUserResume?.();
      this.#userPaused = false;
      this.#pauseCount--;
    }
    if (force || !this.#co.deferred) {
      this.#cancelled = true;
      this.#forceCancel ||= force;
    }
  }

  // ---------------------------------------------------------------- completion

  async #completed(): Promise<void> {
    if (this.isCompleted) throw new Error(`Job '${this.id}' completed twice`);
    this.#updateRc();
    const txn = this.#txn!;
    if (this.error) return txn.jobFailed(this);
    this.transition("waiting");
    await txn.jobSucceeded();
  }

  #updateRc(): void {
    if (!this.error && this.#forceCancel) this.recordError(new BlockError("ECANCELED"));
    if (this.error) this.transition("aborting");
  }

  async #prepareStep(): Promise<boolean> {
    if (!this.error && this.prepare) {
      await this.#hook(this.prepare);
      this.#updateRc();
    }
    return this.error === null;
  }

  async #finishSync(): Promise<void> {
    if (!this.#co.started) return this.#completed();
    while (!this.isCompleted) {
      this.#co.enter();
      await this.nextTransition();
    }
  }

  async #finalizeSingle(): Promise<void> {
    this.#updateRc();
    await this.#hook(this.error ? this.abort : this.commit);
    await this.#hook(this.clean);
    await this.#releaseOnce();
    if (this.#co.started) this.onFinalized?.(this.#forceCancel);
    this.#txn?.remove(this);
    this.#txn = null;
    this.transition("concluded");
    if (this.autoDismiss || !this.#co.started) await this.#dismiss();
  }

  #dismiss(): Promise<void> {
    this.#paused = false;
    this.#txn?.remove(this);
    this.#txn = null;
    this.transition("null");
    this.graph.removeJob(this);
    return this.#releaseOnce();
  }

  async #releaseOnce(): Promise<void> {
    if (this.#released) return;
    this.#released = true;
    await this.#hook(this.release);
  }

  /** Runs a hook; a failure becomes the job's error if it has none yet. */
  async #hook(fn: Hook): Promise<void> {
    if (!fn) return;
    try {
      await fn.call(this);
    } catch (e) {
      this.recordError(e);
    }
  }
}

/** The job with id `id` in `graph`, if any (internal jobs have no id and are not found). */
export function findJob(graph: Graph, id: string): Job | undefined {
  for (const j of graph.jobs()) if (j instanceof Job && !j.internal && j.id === id) return j;
  return undefined;
}

/** `query-jobs`: every job that is not internal, newest first, as QEMU lists them. */
export function queryJobs(graph: Graph): JobInfo[] {
  return graph.jobs().filter((j): j is Job => j instanceof Job && !j.internal).reverse()
    .map((j) => j.info());
}
