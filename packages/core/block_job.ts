/**
 * Block jobs: jobs that work on nodes (mirror, backup, stream, commit). A block job holds
 * child edges to its nodes (so permissions, drain and blockdev-del see it), pauses when
 * those nodes are drained, limits its speed, applies its error policy, and emits QEMU's
 * `BLOCK_JOB_*` events.
 *
 * @module
 */

import { Backend } from "./backend.ts";
import { Child, type ChildParent } from "./child.ts";
import { type ErrorAction, errorAction, type ErrorPolicy, type IoStatus } from "./error_policy.ts";
import { BlockError } from "./errors.ts";
import type { Graph } from "./graph.ts";
import { attachEdge } from "./graph_change.ts";
import { Job } from "./job.ts";
import type { JobOptions } from "./job_state.ts";
import { JOB_SLICE_NS, RateLimit } from "./job_ratelimit.ts";
import type { JobStatus } from "./job_status.ts";
import type { Node } from "./node.ts";
import { Perm } from "./permissions.ts";

/** Options of a block job. */
export interface BlockJobOptions extends JobOptions {
  /** The node the job works on; its `main node` edge. Names the job when `id` is absent. */
  node: Node;
  /** Permissions the job takes on `node` (default none). */
  perm?: number;
  /** Permissions the job lets others take on `node` (default all). */
  shared?: number;
  /** Speed limit in bytes per second (default 0: unlimited). */
  speed?: number;
}

/** One entry of `query-block-jobs`, with QMP's field names. */
export interface BlockJobInfo {
  /** The job type. */
  type: string;
  /** The job id (QMP still calls it `device`). */
  device: string;
  /** Estimated total bytes. */
  len: number;
  /** Bytes done. */
  offset: number;
  /** Whether the job is executing. */
  busy: boolean;
  /** Whether any pause (user or drain) is in force. */
  paused: boolean;
  /** The speed limit in bytes per second (0: none). */
  speed: number;
  /** The I/O status after errors. */
  "io-status": IoStatus;
  /** Whether the job is ready (or standby). */
  ready: boolean;
  /** The job state. */
  status: JobStatus;
  /** Whether the job finalizes by itself. */
  "auto-finalize": boolean;
  /** Whether the job is dismissed by itself. */
  "auto-dismiss": boolean;
  /** The error message, once the job has failed. */
  error?: string;
}

/**
 * QEMU's default id of a block job: the name of the block device whose root the node is;
 * for a node no named device uses, the node name.
 */
export function defaultBlockJobId(node: Node): string {
  for (const c of node.parents) {
    if (c.parent instanceof Backend && c.parent.name) return c.parent.name;
  }
  return node.name;
}

/**
 * The base of every block job. Its child edges are named by the job (`main node`, `target`,
 * ...), carry the job's permissions, stay at their node when the node is replaced, and are
 * dropped when the job finishes.
 */
export abstract class BlockJob extends Job implements ChildParent {
  /** This parent is a job. */
  readonly parentKind = "job" as const;
  #edges: Child[] = [];
  #speed = 0;
  readonly #limit = new RateLimit();
  #ioStatus: IoStatus = "ok";

  /**
   * Creates the job and attaches its `main node` edge. A bad id, a bad speed or a
   * permission conflict throws; the job is then already gone (created → null).
   */
  constructor(options: BlockJobOptions) {
    super({
      ...options,
      id: options.internal ? undefined : options.id ?? defaultBlockJobId(options.node),
    });
    try {
      if (options.speed) this.setSpeed(options.speed);
      this.addNode("main node", options.node, options.perm ?? 0, options.shared ?? Perm.ALL);
    } catch (e) {
      void this.earlyFail();
      throw e;
    }
  }

  /** The job type, as blockdev-del names the job using a node. */
  get jobType(): string {
    return this.type;
  }

  /** The speed limit in bytes per second (0: none). */
  get speed(): number {
    return this.#speed;
  }

  /** The I/O status: `failed` or `nospace` after an error that stopped the job. */
  get ioStatus(): IoStatus {
    return this.#ioStatus;
  }

  /** The nodes the job holds edges to. */
  get nodes(): Node[] {
    return this.#edges.flatMap((e) => (e.node ? [e.node] : []));
  }

  /**
   * Attaches an edge named `name` from the job to `node` with `perm`/`shared` (QEMU's
   * block_job_add_bdrv). A permission conflict throws (EPERM) and changes nothing.
   */
  addNode(name: string, node: Node, perm: number, shared: number): Child {
    if (!node.isOpen) throw new BlockError("ENOMEDIUM", `Node '${node.name}' is closed`);
    const edge = new Child(name, 0, this, perm, shared);
    edge.stayAtNode = true;
    attachEdge(edge, null, node);
    this.#edges.push(edge);
    return edge;
  }

  /** Drops every edge of the job (QEMU's block_job_remove_all_bdrv). */
  async removeAllNodes(): Promise<void> {
    const edges = this.#edges;
    this.#edges = [];
    for (const e of edges) await this.graph.releaseChild(e);
  }

  /** Drops the job's node edges when it finishes. */
  protected override release(): Promise<void> {
    return this.removeAllNodes();
  }

  // ---------------------------------------------------------------- verbs

  /**
   * The `set-speed` verb (block-job-set-speed): bytes per second, 0 for unlimited. A faster
   * speed wakes a sleeping job at once.
   */
  setSpeed(speed: number): void {
    this.applyVerb("set-speed");
    if (!(speed >= 0)) {
      throw new BlockError("EINVAL", "Parameter 'speed' expects a non-negative value");
    }
    const old = this.#speed;
    this.#limit.setSpeed(speed, JOB_SLICE_NS);
    this.#speed = speed;
    if (speed && speed <= old) return;
    this.enterIfSleeping();
  }

  /** The `change` verb (block-job-change): passes `options` to the job's `onChange`. */
  change(options: Record<string, unknown>): void {
    this.applyVerb("change");
    this.onChange?.(options);
  }

  /** Acts on block-job-change options (mirror: `copy-mode`). */
  protected onChange?(options: Record<string, unknown>): void;

  // ---------------------------------------------------------------- for run()

  /** Accounts `bytes` of work against the speed limit. */
  ratelimitProcessed(bytes: number): void {
    this.#limit.calculateDelay(bytes);
  }

  /**
   * Sleeps as long as the speed limit requires (at least once, passing a pause point);
   * woken early, it sleeps on until the time is up or the job is force-cancelled.
   */
  async ratelimitSleep(): Promise<void> {
    let delay: number;
    do {
      delay = this.#limit.calculateDelay(0);
      await this.sleep(delay);
    } while (delay && !this.isCancelled);
  }

  /**
   * Decides what to do about an I/O error under `policy` (on-source-error, on-target-error,
   * on-error) and emits BLOCK_JOB_ERROR. `stop` pauses the job as a user pause and sets the
   * I/O status; block-job-resume clears it.
   */
  errorAction(policy: ErrorPolicy, isRead: boolean, err: BlockError): ErrorAction {
    const action = errorAction(policy, err);
    if (!this.internal) {
      this.graph.events.emit("BLOCK_JOB_ERROR", {
        device: this.id,
        operation: isRead ? "read" : "write",
        action,
      });
    }
    if (action === "stop") {
      this.pauseAsUser();
      if (this.#ioStatus === "ok") this.#ioStatus = err.code === "ENOSPC" ? "nospace" : "failed";
    }
    return action;
  }

  /** The job as `query-block-jobs` shows it. */
  queryBlockJob(): BlockJobInfo {
    const info: BlockJobInfo = {
      type: this.type,
      device: this.id,
      len: this.progressTotal,
      offset: this.progressCurrent,
      busy: this.busy,
      paused: this.pauseCount > 0,
      speed: this.#speed,
      "io-status": this.#ioStatus,
      ready: this.isReady,
      status: this.status,
      "auto-finalize": this.autoFinalize,
      "auto-dismiss": this.autoDismiss,
    };
    if (this.error) info.error = this.error.message;
    return info;
  }

  // ---------------------------------------------------------------- events

  #progressData(): Record<string, unknown> {
    return {
      type: this.type,
      device: this.id,
      len: this.progressTotal,
      offset: this.progressCurrent,
      speed: this.#speed,
    };
  }

  /** A user resume clears the I/O status. */
  protected override onUserResume(): void {
    this.#ioStatus = "ok";
  }

  /** Emits BLOCK_JOB_READY. */
  protected override onReady(): void {
    if (!this.internal) this.graph.events.emit("BLOCK_JOB_READY", this.#progressData());
  }

  /** Emits BLOCK_JOB_PENDING. */
  protected override onPending(): void {
    if (!this.internal) {
      this.graph.events.emit("BLOCK_JOB_PENDING", { type: this.type, id: this.id });
    }
  }

  /** Emits BLOCK_JOB_CANCELLED, or BLOCK_JOB_COMPLETED (with the error, if any). */
  protected override onFinalized(cancelled: boolean): void {
    if (this.internal) return;
    if (cancelled) {
      this.graph.events.emit("BLOCK_JOB_CANCELLED", this.#progressData());
      return;
    }
    const data = this.#progressData();
    if (this.error) data["error"] = this.error.message;
    this.graph.events.emit("BLOCK_JOB_COMPLETED", data);
  }

  // ---------------------------------------------------------------- ChildParent

  /** Describes the job as the holder of an edge: `mirror job 'job0'`. */
  parentDescription(): string {
    return this.describe();
  }

  /** Says how to make the job let go of its nodes. */
  releaseHint(): string {
    return `cancel job '${this.id}' (block-job-cancel) or wait until it finishes`;
  }

  /** A node of the job was drained: pause at the next pause point. */
  childDrainedBegin(_child: Child): void {
    this.pauseInternal();
  }

  /** The drained section ended: lift that pause. */
  childDrainedEnd(_child: Child): void {
    this.resumeInternal();
  }

  /** Whether the job still runs (it is busy and has not completed). */
  childDrainedPoll(_child: Child): boolean {
    if (!this.busy || this.isCompleted) return false;
    return this.drainedPoll?.() ?? true;
  }
}

/** `query-block-jobs`: every block job that is not internal, newest first. */
export function queryBlockJobs(graph: Graph): BlockJobInfo[] {
  return graph.jobs().filter((j): j is BlockJob => j instanceof BlockJob && !j.internal)
    .reverse().map((j) => j.queryBlockJob());
}
