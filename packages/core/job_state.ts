/**
 * What a job is, apart from what it does: its id, type and options, its state with QEMU's
 * transition and verb checks and `JOB_STATUS_CHANGE` events, its error and its progress.
 * `Job` (job.ts) builds the running, the verbs and the completion on top.
 *
 * @module
 */

import { BlockError } from "./errors.ts";
import type { Graph } from "./graph.ts";
import { isWellFormedName } from "./graph.ts";
import {
  canTransition,
  isCompletedStatus,
  isReadyStatus,
  type JobStatus,
  type JobVerb,
  verbAllowed,
} from "./job_status.ts";
import type { JobTxn } from "./job_txn.ts";

/** Options every job takes. */
export interface JobOptions {
  /** The graph the job works in; its event bus carries the job's events. */
  graph: Graph;
  /** The job type as QMP names it: `mirror`, `backup`, `stream`, `commit`, `create`. */
  type: string;
  /** The job id; required unless `internal`. */
  id?: string | undefined;
  /** An internal job: no id, no events, not listed by query-jobs. */
  internal?: boolean;
  /** The transaction to join; without one the job gets its own. */
  txn?: JobTxn | undefined;
  /** Finalize as soon as the transaction is pending (default true). */
  autoFinalize?: boolean;
  /** Dismiss as soon as concluded (default true). */
  autoDismiss?: boolean;
}

/** One entry of `query-jobs`, with QMP's field names. */
export interface JobInfo {
  /** The job id. */
  id: string;
  /** The job type. */
  type: string;
  /** The current state. */
  status: JobStatus;
  /** Work done so far, in the job's own unit (bytes for block jobs). */
  "current-progress": number;
  /** Estimated total work. */
  "total-progress": number;
  /** The error message, once the job has failed. */
  error?: string;
}

/**
 * A job's identity, state, error and progress. Transitions outside QEMU's table are bugs and
 * throw an Error; a verb the state does not accept throws a BlockError (EPERM) with QEMU's
 * text.
 */
export abstract class JobState {
  /** The graph the job belongs to. */
  readonly graph: Graph;
  /** The job id (empty for internal jobs). */
  readonly id: string;
  /** The job type: `mirror`, `backup`, ... */
  readonly type: string;
  /** Whether this is an internal job (no id, no events). */
  readonly internal: boolean;
  /** Whether the job finalizes by itself once its transaction is pending. */
  readonly autoFinalize: boolean;
  /** Whether the job is dismissed by itself once concluded. */
  readonly autoDismiss: boolean;
  #status: JobStatus = "undefined";
  #error: BlockError | null = null;
  #watchers: (() => void)[] = [];
  #progressCurrent = 0;
  #progressTotal = 0;

  /** Checks the id (QEMU's texts for a bad or duplicate one) and enters state `created`. */
  constructor(options: JobOptions) {
    const { graph, id } = options;
    this.internal = options.internal ?? false;
    if (id !== undefined) {
      if (this.internal) throw new BlockError("EINVAL", "Cannot specify job ID for internal job");
      if (!isWellFormedName(id)) throw new BlockError("EINVAL", `Invalid job ID '${id}'`);
      if (idInUse(graph, id)) throw new BlockError("EEXIST", `Job ID '${id}' already in use`);
    } else if (!this.internal) {
      throw new BlockError("EINVAL", "An explicit job ID is required");
    }
    this.graph = graph;
    this.id = id ?? "";
    this.type = options.type;
    this.autoFinalize = options.autoFinalize ?? true;
    this.autoDismiss = options.autoDismiss ?? true;
    this.transition("created");
  }

  /** The current state. */
  get status(): JobStatus {
    return this.#status;
  }

  /** Records `err` as the job's error unless it has one already. */
  protected recordError(err: unknown): void {
    this.#error ??= BlockError.from(err, { op: this.type });
  }

  /** Whether the job is ready or standby. */
  get isReady(): boolean {
    return isReadyStatus(this.#status);
  }

  /** Whether the job has finished running: waiting, pending, aborting, concluded or null. */
  get isCompleted(): boolean {
    return isCompletedStatus(this.#status);
  }

  /** The error the job failed with (ECANCELED after a forced cancel), or `null`. */
  get error(): BlockError | null {
    return this.#error;
  }

  /** Work done so far. */
  get progressCurrent(): number {
    return this.#progressCurrent;
  }

  /** Estimated total work. */
  get progressTotal(): number {
    return this.#progressTotal;
  }

  /** Records `done` more units of work done. */
  progressUpdate(done: number): void {
    this.#progressCurrent += done;
  }

  /** Sets the estimate so that `remaining` units are left. */
  progressSetRemaining(remaining: number): void {
    this.#progressTotal = this.#progressCurrent + remaining;
  }

  /** Raises the estimate by `delta` units. */
  progressIncreaseRemaining(delta: number): void {
    this.#progressTotal += delta;
  }

  /** The job as `query-jobs` shows it. */
  info(): JobInfo {
    const info: JobInfo = {
      id: this.id,
      type: this.type,
      status: this.#status,
      "current-progress": this.#progressCurrent,
      "total-progress": this.#progressTotal,
    };
    if (this.#error) info.error = this.#error.message;
    return info;
  }

  /** Describes the job for messages: `mirror job 'job0'`. */
  describe(): string {
    return this.internal ? `internal ${this.type} job` : `${this.type} job '${this.id}'`;
  }

  /** Resolves once the job is in one of `statuses`; rejects if it reaches null first. */
  async waitForStatus(...statuses: JobStatus[]): Promise<void> {
    while (!statuses.includes(this.#status)) {
      if (this.#status === "null") {
        throw new BlockError(
          "ENOENT",
          `${this.describe()} was dismissed before reaching ${statuses.join(" or ")}`,
        );
      }
      await this.nextTransition();
    }
  }

  /** Resolves at the next state transition. */
  protected nextTransition(): Promise<void> {
    return new Promise((resolve) => this.#watchers.push(resolve));
  }

  /** Moves to state `to`; a move outside QEMU's table is a bug and throws. */
  protected transition(to: JobStatus): void {
    const from = this.#status;
    if (!canTransition(from, to)) {
      throw new Error(`Job '${this.id}': illegal transition from '${from}' to '${to}'`);
    }
    this.#status = to;
    if (!this.internal && from !== to) {
      this.graph.events.emit("JOB_STATUS_CHANGE", { id: this.id, status: to });
    }
    const w = this.#watchers;
    this.#watchers = [];
    for (const f of w) f();
  }

  /** Throws QEMU's error (EPERM) unless the current state accepts `verb`. */
  protected applyVerb(verb: JobVerb): void {
    if (verbAllowed(verb, this.#status)) return;
    throw new BlockError(
      "EPERM",
      `Job '${this.id}' in state '${this.#status}' cannot accept command verb '${verb}'`,
    );
  }
}

function idInUse(graph: Graph, id: string): boolean {
  return graph.jobs().some((j) => j instanceof JobState && !j.internal && j.id === id);
}
