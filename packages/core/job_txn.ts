/**
 * Transactions of jobs: jobs that finish together.
 *
 * Every job belongs to exactly one {@link JobTxn}; a job created without one gets its own.
 * The jobs of one transaction each wait (state `waiting`) until all of them have finished
 * running, then move to `pending` together and are finalized together: every job's
 * `prepare` runs first, and any failure aborts the whole transaction (`abort`, then `clean`,
 * on each). When one job fails or is force-cancelled, every other job of its transaction is
 * force-cancelled too. This is QMP `transaction` with `completion-mode: grouped`;
 * `individual` gives each job its own transaction.
 *
 * @module
 */

import type { Job } from "./job.ts";

/** What a transaction does to one of its jobs; each job hands these over when it joins. */
export interface TxnMember {
  /** The job. */
  readonly job: Job;
  /** Moves the job from waiting to pending (BLOCK_JOB_PENDING when not auto-finalized). */
  moveToPending(): void;
  /** Runs the job's `prepare`; resolves to whether the job may still commit. */
  prepare(): Promise<boolean>;
  /** Commits or aborts the job, cleans up and concludes it; it leaves the transaction. */
  finalize(): Promise<void>;
  /** Marks the job force-cancelled (the transaction failed). */
  forceCancel(): void;
  /** Resolves once the job has finished running. */
  finishSync(): Promise<void>;
}

/**
 * A group of jobs that complete or fail as one.
 *
 * @example
 * ```ts ignore
 * const txn = new JobTxn();
 * const a = new BackupJob({ graph, id: "a", txn, ... });
 * const b = new BackupJob({ graph, id: "b", txn, ... });
 * a.start();
 * b.start();
 * ```
 */
export class JobTxn {
  #members: TxnMember[] = [];
  #aborting = false;
  #finalizing: Promise<void> | null = null;

  /** The jobs still in the transaction, newest first (as QEMU keeps them). */
  get jobs(): Job[] {
    return this.#members.map((m) => m.job);
  }

  /** Whether the transaction is being aborted. */
  get aborting(): boolean {
    return this.#aborting;
  }

  /** Adds a job (called by the job's constructor). */
  add(member: TxnMember): void {
    if (this.#members.some((m) => m.job === member.job)) {
      throw new Error(`Job '${member.job.id}' is already in the transaction`);
    }
    this.#members.unshift(member);
  }

  /** Removes a job once it is finalized or dismissed (called by the job). */
  remove(job: Job): void {
    const i = this.#members.findIndex((m) => m.job === job);
    if (i >= 0) this.#members.splice(i, 1);
  }

  /**
   * A job finished running successfully and is waiting. Once every job has, all move to
   * pending, and the transaction is finalized unless a job wants manual finalization.
   */
  async jobSucceeded(): Promise<void> {
    const members = [...this.#members];
    if (members.some((m) => !m.job.isCompleted)) return;
    for (const m of members) m.moveToPending();
    if (members.every((m) => m.job.autoFinalize)) await this.finalize();
  }

  /**
   * Finalizes the pending transaction: `prepare` on every job, then commit (or, if any
   * prepare failed, abort) on each. A second call while one runs waits for the first.
   */
  finalize(): Promise<void> {
    if (this.#aborting) return Promise.resolve();
    if (this.#finalizing) return this.#finalizing;
    const work = async () => {
      await Promise.resolve(); // `#finalizing` is set before anything below runs
      try {
        for (const m of [...this.#members]) {
          if (!(await m.prepare())) return await this.#abort(m.job);
        }
        for (const m of [...this.#members]) await m.finalize();
      } finally {
        this.#finalizing = null;
      }
    };
    return this.#finalizing = work();
  }

  /**
   * `failed` failed or was force-cancelled: force-cancel every other job, wait until each
   * has stopped running, and finalize them all (they abort). Waits for a finalization in
   * progress first; does nothing when the transaction is already aborting.
   */
  async jobFailed(failed: Job): Promise<void> {
    if (this.#finalizing) await this.#finalizing;
    if (!this.#members.some((m) => m.job === failed)) return;
    await this.#abort(failed);
  }

  async #abort(failed: Job): Promise<void> {
    if (this.#aborting) return;
    this.#aborting = true;
    for (const m of this.#members) if (m.job !== failed) m.forceCancel();
    while (this.#members.length > 0) {
      const m = this.#members[0]!;
      if (!m.job.isCompleted) await m.finishSync();
      await m.finalize();
    }
  }
}
