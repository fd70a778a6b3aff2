/**
 * What a qcow2 `check` reports (QEMU's `BdrvCheckResult`, with `qemu-img check
 * --output=json`'s field names), the repairs it may make, and the counts one pass keeps.
 *
 * @module
 */

/** What `check` found and fixed, with `qemu-img check --output=json`'s field names. */
export interface Qcow2CheckResult {
  /** Errors left in the image. */
  corruptions: number;
  /** Leaked clusters left in the image. */
  leaks: number;
  /** Errors that stopped the check from looking at something. */
  "check-errors": number;
  /** Errors repaired. */
  "corruptions-fixed": number;
  /** Leaks repaired. */
  "leaks-fixed": number;
  /** Where the last cluster in use ends. */
  "image-end-offset": number;
  /** Clusters of the virtual disk. */
  "total-clusters": number;
  /** Guest clusters allocated in the active L1 tree. */
  "allocated-clusters": number;
  /** Of those, clusters not right after the previous one in the file. */
  "fragmented-clusters": number;
  /** Of those, compressed clusters. */
  "compressed-clusters": number;
  /**
   * Set when the check itself failed (QEMU's `bdrv_check` returning an error, such as
   * refcount structures that need a rebuild under `-r leaks`): the error's text. qemu-img
   * then prints the check's lines and "Check failed: " with it, and no summary.
   */
  failure?: string;
  /**
   * The lines qemu-img prints, in its order: the check's own lines (stderr), and after a
   * repair "The following inconsistencies were found and repaired:", a blank line, the two
   * counts, a blank line and "Double checking the fixed image now..." (stdout), then the
   * second check's lines.
   */
  messages: string[];
}

/** Which repairs to make: QEMU's `-r leaks` and `-r all`. */
export type Qcow2RepairMode = "none" | "leaks" | "all";

/** Which repairs a pass makes. */
export interface Fix {
  leaks: boolean;
  errors: boolean;
}

/** What one pass counts, before they become a {@link Qcow2CheckResult}. */
export interface Counts {
  corruptions: number;
  leaks: number;
  checkErrors: number;
  corruptionsFixed: number;
  leaksFixed: number;
  allocated: number;
  fragmented: number;
  compressed: number;
}

/** Counts of nothing found yet. */
export function zeroCounts(): Counts {
  return {
    corruptions: 0,
    leaks: 0,
    checkErrors: 0,
    corruptionsFixed: 0,
    leaksFixed: 0,
    allocated: 0,
    fragmented: 0,
    compressed: 0,
  };
}
