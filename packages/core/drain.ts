/**
 * Drained sections: quiescing a node and everything above it.
 *
 * Draining a node increments its quiesce counter and quiesces each parent through its edge:
 * parent nodes recurse upward, Backends queue new requests, jobs pause. The section begins
 * once neither the node nor anything above it has a request in flight.
 *
 * @module
 */

import type { Child } from "./child.ts";
import type { Node } from "./node.ts";

/** Quiesces `child`'s parent through this one edge. */
export function parentDrainedBegin(child: Child): void {
  if (child.quiescedParent) return;
  child.quiescedParent = true;
  child.parent.childDrainedBegin(child);
}

/** Ends the quiescing of `child`'s parent through this edge. */
export function parentDrainedEnd(child: Child): void {
  if (!child.quiescedParent) return;
  child.quiescedParent = false;
  child.parent.childDrainedEnd(child);
}

/** Enters a drained section on `node` without waiting for requests to finish. */
export function drainBeginNoPoll(node: Node): void {
  if (node.quiesceCounter++ === 0) {
    for (const c of [...node.parents]) parentDrainedBegin(c);
    node.instance?.drainBegin?.();
  }
}

/** Leaves a drained section on `node`. */
export function drainEnd(node: Node): void {
  if (node.quiesceCounter <= 0) throw new Error(`drainEnd on undrained node '${node.name}'`);
  if (--node.quiesceCounter === 0) {
    node.instance?.drainEnd?.();
    for (const c of [...node.parents]) parentDrainedEnd(c);
  }
}

/** Whether `node` or anything above it still has requests in flight. */
export function drainPoll(node: Node): boolean {
  if (node.inFlight > 0) return true;
  for (const c of node.parents) if (c.parent.childDrainedPoll(c)) return true;
  return false;
}

/**
 * Keeps an edge's parent quiesced exactly while its node is drained; called after an edge
 * moves to another node (or is attached or detached).
 */
export function syncEdgeQuiesce(child: Child): void {
  const drained = child.node !== null && child.node.quiesceCounter > 0;
  if (drained) parentDrainedBegin(child);
  else parentDrainedEnd(child);
}
