/**
 * The conformance suite every driver runs: pass a {@link ConformanceTarget} (how to open a
 * fresh node, what the driver can do) to {@link runConformance}.
 *
 * @module
 */

export {
  assert,
  assertBytesEqual,
  assertEquals,
  AssertionError,
  assertRejectsWith,
} from "./assertions.ts";
export { caseApplies, conformanceCases, pattern, rng } from "./cases.ts";
export { DiskModel } from "./disk_model.ts";
export { runCase, runConformance } from "./suite.ts";
export {
  type CaseContext,
  CONFORMANCE_HOLDER,
  CONFORMANCE_MIN_SIZE,
  type ConformanceCapabilities,
  type ConformanceCase,
  type ConformanceTarget,
} from "./target.ts";
