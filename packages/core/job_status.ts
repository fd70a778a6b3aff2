/**
 * Job states and verbs: QEMU's transition table (`JobSTT`) and verb table (`JobVerbTable`),
 * as data. {@link Job} consults them on every transition and every command.
 *
 * @module
 */

/** A job's state, spelled as QMP spells `JobStatus`. */
export type JobStatus =
  | "undefined"
  | "created"
  | "running"
  | "paused"
  | "ready"
  | "standby"
  | "waiting"
  | "pending"
  | "aborting"
  | "concluded"
  | "null";

/** A command a job accepts, spelled as QMP spells `JobVerb`. */
export type JobVerb =
  | "cancel"
  | "pause"
  | "resume"
  | "set-speed"
  | "complete"
  | "finalize"
  | "dismiss"
  | "change";

/** Every job state, in QEMU's order. */
export const JOB_STATUSES: readonly JobStatus[] = [
  "undefined",
  "created",
  "running",
  "paused",
  "ready",
  "standby",
  "waiting",
  "pending",
  "aborting",
  "concluded",
  "null",
];

/** Every job verb, in QEMU's order. */
export const JOB_VERBS: readonly JobVerb[] = [
  "cancel",
  "pause",
  "resume",
  "set-speed",
  "complete",
  "finalize",
  "dismiss",
  "change",
];

/** The states each state may move to (QEMU's `JobSTT`). */
const TRANSITIONS: Readonly<Record<JobStatus, readonly JobStatus[]>> = {
  undefined: ["created"],
  created: ["running", "aborting", "null"],
  running: ["paused", "ready", "waiting", "aborting"],
  paused: ["running"],
  ready: ["standby", "waiting", "aborting"],
  standby: ["ready"],
  waiting: ["pending", "aborting"],
  pending: ["aborting", "concluded"],
  aborting: ["aborting", "concluded"],
  concluded: ["null"],
  null: [],
};

const ACTIVE: readonly JobStatus[] = ["created", "running", "paused", "ready", "standby"];

/** The states each verb is accepted in (QEMU's `JobVerbTable`). */
const VERBS: Readonly<Record<JobVerb, readonly JobStatus[]>> = {
  cancel: [...ACTIVE, "waiting", "pending"],
  pause: ACTIVE,
  resume: ACTIVE,
  "set-speed": ACTIVE,
  change: ACTIVE,
  complete: ["ready", "standby"],
  finalize: ["pending"],
  dismiss: ["concluded"],
};

/** Whether a job in state `from` may move to state `to`. */
export function canTransition(from: JobStatus, to: JobStatus): boolean {
  return TRANSITIONS[from].includes(to);
}

/** Whether a job in state `status` accepts `verb`. */
export function verbAllowed(verb: JobVerb, status: JobStatus): boolean {
  return VERBS[verb].includes(status);
}

/**
 * Whether a job in `status` has finished running (QEMU's `job_is_completed`): waiting,
 * pending, aborting, concluded or null.
 */
export function isCompletedStatus(status: JobStatus): boolean {
  return status === "waiting" || status === "pending" || status === "aborting" ||
    status === "concluded" || status === "null";
}

/** Whether a job in `status` is ready (QEMU's `job_is_ready`): ready or standby. */
export function isReadyStatus(status: JobStatus): boolean {
  return status === "ready" || status === "standby";
}
