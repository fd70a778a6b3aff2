/**
 * What a driver hands the conformance suite: how to open a fresh node of it, and what it can
 * do. The suite asks these capabilities rather than assuming them.
 *
 * @module
 */

import type { DriverRegistry, Graph, Node } from "@blockgraph/core";
import type { DiskModel } from "./disk_model.ts";

/** The holder name targets open their node under; the suite drops that reference. */
export const CONFORMANCE_HOLDER = "conformance";

/** The smallest disk the suite works with: its requests stay below this offset. */
export const CONFORMANCE_MIN_SIZE = 1024 * 1024;

/** What a driver under test can do; the suite checks the behaviour each flag promises. */
export interface ConformanceCapabilities {
  /** Written data reads back (false for `null-co`, which stores nothing). */
  readonly persistent: boolean;
  /**
   * For a disk that is not persistent: every read returns zeros (`null-co` with
   * `read-zeroes=on`). Without it, the content of reads is not checked.
   */
  readonly readsZeroes?: boolean;
  /** `truncate` grows and shrinks the node; without it truncate must fail with ENOTSUP. */
  readonly resize: boolean;
  /** Writes past the end grow the disk, as writes to a file do. */
  readonly growsOnWrite: boolean;
  /**
   * After a discard, every whole aligned block of this size inside the range reads as zeros.
   * Absent or 0: a discarded byte reads either as before or as zero, nothing more is promised.
   */
  readonly discardGranularity?: number;
}

/** A driver under test, as the suite sees it. */
export interface ConformanceTarget {
  /** The drivers the graph is made with. */
  readonly registry: DriverRegistry;
  /** What the driver can do. */
  readonly capabilities: ConformanceCapabilities;
  /**
   * Opens a fresh node under {@link CONFORMANCE_HOLDER}: at least
   * {@link CONFORMANCE_MIN_SIZE} bytes that read as zeros (unless not persistent), with
   * `discard: "unmap"` so discards reach the driver, read-only when asked.
   */
  open(graph: Graph, options: { readOnly: boolean }): Promise<Node>;
  /** Called after every case, once its graph is closed (removes temporary files). */
  cleanup?(): Promise<void>;
}

/** What a case gets: the node, the model of its data, and the target's capabilities. */
export interface CaseContext {
  /** The node under test, opened by the target. */
  readonly node: Node;
  /** The expected content of the node, kept in step by the case. */
  readonly model: DiskModel;
  /** The target's capabilities. */
  readonly caps: ConformanceCapabilities;
}

/** One behaviour every driver must show. */
export interface ConformanceCase {
  /** Says the behaviour: "write then read at odd offsets and lengths". */
  readonly name: string;
  /** Whether the case runs on a read-only node. */
  readonly readOnly?: boolean;
  /** Whether the case applies to a target with these capabilities (default: always). */
  applies?(caps: ConformanceCapabilities): boolean;
  /** Runs the case; throws when the driver misbehaves. */
  run(ctx: CaseContext): Promise<void>;
}
