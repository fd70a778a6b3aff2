/**
 * QMP errors: the class a client branches on (`GenericError`, `CommandNotFound`,
 * `DeviceNotFound`, ...) and the description a person reads.
 *
 * @module
 */

/** QEMU's error classes (qapi/error.json). */
export type QmpErrorClass =
  | "GenericError"
  | "CommandNotFound"
  | "DeviceNotActive"
  | "DeviceNotFound"
  | "KVMMissingCap";

/** An error a QMP command answers with. */
export class QmpError extends Error {
  /** The error class. */
  readonly errorClass: QmpErrorClass;

  /** Creates an error of class `errorClass` saying `desc`. */
  constructor(errorClass: QmpErrorClass, desc: string) {
    super(desc);
    this.name = "QmpError";
    this.errorClass = errorClass;
  }

  /** The `error` member of a QMP reply. */
  toJSON(): { class: QmpErrorClass; desc: string } {
    return { class: this.errorClass, desc: this.message };
  }
}

/** A `GenericError` saying `desc`. */
export function genericError(desc: string): QmpError {
  return new QmpError("GenericError", desc);
}

/**
 * Turns anything a command threw into a QmpError: QmpErrors pass through; every other error
 * is a `GenericError` with its message, as QEMU reports block layer errors.
 */
export function toQmpError(e: unknown): QmpError {
  if (e instanceof QmpError) return e;
  return genericError(e instanceof Error ? e.message : String(e));
}
