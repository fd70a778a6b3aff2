/**
 * User-creatable objects: what `--object TYPE,id=ID,...` and QMP `object-add` define, kept by
 * id in one place per graph, as QEMU keeps them under `/objects`. A driver finds the object
 * its options name (an `nbd` node's `tls-creds=ID`) through its node's graph.
 *
 * The graph keeps each object's definition, its QOM properties as they were given, and knows
 * nothing of the types: whoever creates an object checks it first (a CLI's `--object`, the
 * daemon's `object-add`), and whoever uses one makes of it what it needs when it needs it
 * (the `nbd` driver loads a `tls-creds-x509` object's certificates when a node opens).
 *
 * Deleting an object does not touch what was made of it: a node that opened with an object
 * keeps what it loaded, as QEMU's nodes keep their reference to the object (QEMU 7.2's
 * `object-del` of the `tls-creds-x509` an `nbd` node uses succeeds, and the node goes on);
 * nodes opened afterwards no longer find it. A user that must not lose its object checks
 * before deleting it, with QEMU's "object 'ID' is in use, can not be deleted".
 *
 * @module
 */

import { BlockError } from "./errors.ts";

/**
 * One object's definition: its QOM properties as given, with its type in `qom-type` and its
 * id. Values are as the creator had them: strings from the `key=value` syntax
 * (`verify-peer=off`), JSON values from QMP (`"verify-peer": false`).
 */
export interface UserObject {
  /** The QOM type (`tls-creds-x509`, `authz-simple`, `secret`). */
  readonly "qom-type": string;
  /** The object's id, unique among the graph's objects. */
  readonly id: string;
  /** The other properties (`dir`, `endpoint`, `verify-peer`, ...). */
  readonly [property: string]: unknown;
}

/**
 * The user-creatable objects of a graph, by id (`Graph.objects`).
 *
 * @example
 * ```ts
 * import { UserObjects } from "@blockgraph/core";
 * const objects = new UserObjects();
 * objects.add({ "qom-type": "tls-creds-x509", id: "tls0", endpoint: "client", dir: "/pki" });
 * console.assert(objects.get("tls0")?.dir === "/pki");
 * objects.delete("tls0");
 * console.assert(!objects.has("tls0"));
 * ```
 */
export class UserObjects implements Iterable<UserObject> {
  readonly #objects = new Map<string, UserObject>();

  /** The object with id `id`, or undefined. */
  get(id: string): UserObject | undefined {
    return this.#objects.get(id);
  }

  /** Whether an object has id `id`. */
  has(id: string): boolean {
    return this.#objects.has(id);
  }

  /** How many objects there are. */
  get size(): number {
    return this.#objects.size;
  }

  /** Every object, in the order they were added. */
  [Symbol.iterator](): Iterator<UserObject> {
    return this.#objects.values();
  }

  /**
   * Adds an object (a copy of `object`). A second object with the same id is refused (EEXIST)
   * with QEMU's message: "attempt to add duplicate property 'ID' to object (type 'container')".
   */
  add(object: UserObject): void {
    const id = object.id;
    if (this.#objects.has(id)) {
      throw new BlockError(
        "EEXIST",
        `attempt to add duplicate property '${id}' to object (type 'container')`,
      );
    }
    this.#objects.set(id, Object.freeze({ ...object }));
  }

  /**
   * Deletes the object `id`; ENOENT with QEMU's "object 'ID' not found" when there is none.
   * What users made of it stays theirs (see the module documentation).
   */
  delete(id: string): void {
    if (!this.#objects.delete(id)) throw new BlockError("ENOENT", `object '${id}' not found`);
  }
}
