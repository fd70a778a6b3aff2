/**
 * QEMU's `QemuOpts` option strings as qemu-io reads them (`--image-opts`, `open -o`):
 * `key=value` pairs split at commas, `,,` for a literal comma, and the deprecated short-form
 * booleans (`key` for `key=on`, `nokey` for `key=off`) accepted with QEMU's warning.
 *
 * @module
 */

/** The result of {@link parseQemuOpts}: flat `key -> value` pairs and the warnings to print. */
export interface ParsedOpts {
  /** The options; a later duplicate replaces an earlier one, as QEMU's dict conversion does. */
  readonly values: Record<string, string>;
  /** Warnings QEMU prints for short-form booleans (each may span lines). */
  readonly warnings: string[];
}

/**
 * Parses a QemuOpts string. With `implied` (the option list's implied name: `file` for
 * qemu-img's `--image-opts`), a first element without `=` is that option's value, as
 * QemuOpts reads `foo.qcow2,driver=qcow2` as `file=foo.qcow2,driver=qcow2`; a later one is a
 * short-form boolean.
 *
 * @example
 * ```ts
 * import { parseQemuOpts } from "./qemu_opts.ts";
 * const r = parseQemuOpts("driver=raw,file.filename=a,,b");
 * console.assert(r.values["file.filename"] === "a,b");
 * console.assert(parseQemuOpts("a.raw,driver=raw", "file").values.file === "a.raw");
 * ```
 */
export function parseQemuOpts(text: string, implied?: string): ParsedOpts {
  const values: Record<string, string> = {};
  const warnings: string[] = [];
  let i = 0;
  /** The value from `i` to the next single comma (`,,` is a comma); steps past that comma. */
  const readValue = (): string => {
    let value = "";
    while (i < text.length) {
      if (text[i] === ",") {
        if (text[i + 1] === ",") {
          value += ",";
          i += 2;
          continue;
        }
        break;
      }
      value += text[i++];
    }
    i++;
    return value;
  };
  while (i < text.length) {
    const start = i;
    let key = "";
    while (i < text.length && text[i] !== "=" && text[i] !== ",") key += text[i++];
    if (text[i] !== "=") {
      if (start === 0 && implied !== undefined) {
        i = 0;
        values[implied] = readValue();
        continue;
      }
      // A bare word: a short-form boolean.
      i++;
      if (key.startsWith("no") && key.length > 2) {
        const name = key.slice(2);
        warnings.push(
          `warning: short-form boolean option '${key}' deprecated\nPlease use ${name}=off instead`,
        );
        values[name] = "off";
      } else {
        warnings.push(
          `warning: short-form boolean option '${key}' deprecated\nPlease use ${key}=on instead`,
        );
        values[key] = "on";
      }
      continue;
    }
    i++;
    values[key] = readValue();
  }
  return { values, warnings };
}
