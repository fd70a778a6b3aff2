/**
 * JSON as QEMU reads and writes it (`qobject/json-lexer.c`, `json-streamer.c`,
 * `json-parser.c`, `qjson.c`): single-quoted strings as its extension, its lexer's error
 * recovery, its messages ("JSON parse error, stray '%'", "Expecting a JSON value"), and its
 * compact output, with dictionary keys in QDict order and every character outside printable
 * ASCII escaped as `\uXXXX`.
 *
 * @module
 */

import { BlockError } from "./errors.ts";
import { qdictKeys } from "./qdict_order.ts";

/** A JSON value as parsed. */
export type JsonValue =
  | null
  | boolean
  | number
  | string
  | JsonValue[]
  | { [key: string]: JsonValue };

type TokenKind =
  | "{"
  | "}"
  | "["
  | "]"
  | ":"
  | ","
  | "string"
  | "integer"
  | "float"
  | "keyword";

interface Token {
  kind: TokenKind;
  text: string;
}

/** The lexer's states (QEMU's `json_lexer_state`). */
const enum S {
  Start,
  Recovery,
  DqString,
  DqEscape,
  SqString,
  SqEscape,
  Zero,
  Sign,
  Digits,
  Mantissa,
  MantissaDigits,
  ExpE,
  ExpSign,
  ExpDigits,
  Keyword,
}

/** A transition: the next state or what the lexer emits, and whether it looks ahead. */
type Next = S | TokenKind | "error";

const STRUCTURAL = "{}[]:,";
const MAX_NESTING = 1024;

function isDigit(c: string): boolean {
  return c >= "0" && c <= "9";
}

/**
 * One step of QEMU's lexer table: where `state` goes on `c` (`""` at the end of input), and
 * whether `c` is left for the next state to read (a lookahead).
 */
function transition(state: S, c: string): [Next, boolean] {
  const code = c === "" ? 0 : c.codePointAt(0)!;
  switch (state) {
    case S.Recovery:
      if (code <= 0x1f && c !== "\t") return [S.Start, true];
      if (STRUCTURAL.includes(c) && c !== "") return [S.Start, true];
      return [S.Recovery, false];
    case S.DqString:
    case S.SqString: {
      const quote = state === S.DqString ? '"' : "'";
      if (c === quote) return ["string", false];
      if (code < 0x20) return ["error", false];
      if (c === "\\") return [state === S.DqString ? S.DqEscape : S.SqEscape, false];
      return [state, false];
    }
    case S.DqEscape:
      return code < 0x20 ? ["error", false] : [S.DqString, false];
    case S.SqEscape:
      return code < 0x20 ? ["error", false] : [S.SqString, false];
    case S.Zero:
      if (isDigit(c)) return ["error", false];
      if (c === ".") return [S.Mantissa, false];
      return ["integer", true];
    case S.Sign:
      if (c === "0") return [S.Zero, false];
      if (isDigit(c)) return [S.Digits, false];
      return ["error", false];
    case S.Digits:
      if (isDigit(c)) return [S.Digits, false];
      if (c === "e" || c === "E") return [S.ExpE, false];
      if (c === ".") return [S.Mantissa, false];
      return ["integer", true];
    case S.Mantissa:
      return isDigit(c) ? [S.MantissaDigits, false] : ["error", false];
    case S.MantissaDigits:
      if (isDigit(c)) return [S.MantissaDigits, false];
      if (c === "e" || c === "E") return [S.ExpE, false];
      return ["float", true];
    case S.ExpE:
      if (c === "-" || c === "+") return [S.ExpSign, false];
      return isDigit(c) ? [S.ExpDigits, false] : ["error", false];
    case S.ExpSign:
      return isDigit(c) ? [S.ExpDigits, false] : ["error", false];
    case S.ExpDigits:
      return isDigit(c) ? [S.ExpDigits, false] : ["float", true];
    case S.Keyword:
      return c >= "a" && c <= "z" && c !== "" ? [S.Keyword, false] : ["keyword", true];
    case S.Start:
      if (c === '"') return [S.DqString, false];
      if (c === "'") return [S.SqString, false];
      if (c === "0") return [S.Zero, false];
      if (isDigit(c)) return [S.Digits, false];
      if (c === "-") return [S.Sign, false];
      if (c !== "" && STRUCTURAL.includes(c)) return [c as TokenKind, false];
      if (c >= "a" && c <= "z" && c !== "") return [S.Keyword, false];
      if (c === " " || c === "\t" || c === "\r" || c === "\n") return [S.Start, false];
      return ["error", false];
  }
}

/**
 * QEMU's JSON lexer and streamer: feeds text in pieces and gives back each complete value, or
 * the error that ended it, in order (a QMP monitor reads requests this way). After an error
 * it skips to the next structural character, as QEMU does.
 *
 * @example
 * ```ts
 * import { JsonStreamer } from "@blockgraph/core";
 * const s = new JsonStreamer();
 * console.assert(s.feed('{"a": [1, ').length === 0);
 * console.assert(JSON.stringify(s.feed("'b']} ")) === '[{"a":[1,"b"]}]');
 * ```
 */
export class JsonStreamer {
  #state: S = S.Start;
  #token = "";
  #tokens: Token[] = [];
  #braces = 0;
  #brackets = 0;

  /** Feeds `text`; returns each complete value (parsed) or its error, in order. */
  feed(text: string): (JsonValue | BlockError)[] {
    const out: (JsonValue | BlockError)[] = [];
    for (const c of text) this.#char(c, false, out);
    return out;
  }

  /** Ends the input: a token or value left incomplete is read now (or fails). */
  flush(): (JsonValue | BlockError)[] {
    const out: (JsonValue | BlockError)[] = [];
    this.#char("", true, out);
    if (this.#tokens.length > 0) this.#emit(out);
    return out;
  }

  #char(c: string, flush: boolean, out: (JsonValue | BlockError)[]): void {
    let consumed = false;
    while (flush ? this.#state !== S.Start : !consumed) {
      const [next, lookahead] = transition(this.#state, c);
      consumed = !flush && !lookahead;
      if (consumed) this.#token += c;
      if (typeof next === "string") {
        if (next === "error") {
          this.#reset();
          out.push(parseError(`stray '${this.#token}'`));
          this.#state = S.Recovery;
        } else {
          this.#process({ kind: next, text: this.#token }, out);
          this.#state = S.Start;
        }
        this.#token = "";
        continue;
      }
      if (next === S.Start || next === S.Recovery) this.#token = "";
      this.#state = next;
    }
  }

  #process(token: Token, out: (JsonValue | BlockError)[]): void {
    if (token.kind === "{") this.#braces++;
    else if (token.kind === "}") this.#braces--;
    else if (token.kind === "[") this.#brackets++;
    else if (token.kind === "]") this.#brackets--;
    if (this.#braces + this.#brackets > MAX_NESTING) {
      this.#reset();
      out.push(new BlockError("EINVAL", "JSON nesting depth limit exceeded"));
      return;
    }
    this.#tokens.push(token);
    if ((this.#braces > 0 || this.#brackets > 0) && this.#braces >= 0 && this.#brackets >= 0) {
      return;
    }
    this.#emit(out);
  }

  #emit(out: (JsonValue | BlockError)[]): void {
    const tokens = this.#tokens;
    this.#reset();
    try {
      out.push(parseTokens(tokens));
    } catch (e) {
      if (!(e instanceof BlockError)) throw e;
      out.push(e);
    }
  }

  #reset(): void {
    this.#tokens = [];
    this.#braces = 0;
    this.#brackets = 0;
  }
}

/**
 * Parses one JSON text as QEMU's `qobject_from_json` does: exactly one value, else "Expecting
 * a JSON value" or "Expecting at most one JSON value"; the first error found wins. Throws a
 * {@link BlockError} (EINVAL) with QEMU's message.
 *
 * @example
 * ```ts
 * import { parseQemuJson } from "@blockgraph/core";
 * console.assert((parseQemuJson("{'a': 1}") as { a: number }).a === 1);
 * ```
 */
export function parseQemuJson(text: string): JsonValue {
  const s = new JsonStreamer();
  let result: { value: JsonValue } | null = null;
  let error: BlockError | null = null;
  for (const v of [...s.feed(text), ...s.flush()]) {
    if (result !== null) {
      result = null;
      error = new BlockError("EINVAL", "Expecting at most one JSON value");
    }
    if (error !== null) continue;
    if (v instanceof BlockError) error = v;
    else result = { value: v };
  }
  if (error !== null) throw error;
  if (result === null) throw new BlockError("EINVAL", "Expecting a JSON value");
  return result.value;
}

function parseError(reason: string): BlockError {
  return new BlockError("EINVAL", `JSON parse error, ${reason}`);
}

/** QEMU's json-parser over the tokens of one value; throws its first error. */
function parseTokens(tokens: Token[]): JsonValue {
  let i = 0;
  const peek = (): Token | undefined => tokens[i];
  const pop = (): Token => {
    const t = tokens[i++];
    if (!t) throw parseError("premature EOI");
    return t;
  };
  const value = (): JsonValue => {
    const t = peek();
    if (!t) throw parseError("premature EOI");
    switch (t.kind) {
      case "{":
        return object();
      case "[":
        return array();
      case "string":
        i++;
        return parseString(t.text);
      case "integer":
      case "float":
        i++;
        return Number(t.text);
      case "keyword":
        i++;
        if (t.text === "true") return true;
        if (t.text === "false") return false;
        if (t.text === "null") return null;
        throw parseError(`invalid keyword '${t.text}'`);
      default:
        throw parseError("expecting value");
    }
  };
  const pair = (out: { [key: string]: JsonValue }): void => {
    if (!peek()) throw parseError("premature EOI");
    const key = value();
    if (typeof key !== "string") throw parseError("key is not a string in object");
    if (pop().kind !== ":") throw parseError("missing : in object pair");
    const v = value();
    if (Object.hasOwn(out, key)) throw parseError("duplicate key");
    out[key] = v;
  };
  const object = (): JsonValue => {
    i++;
    const out: { [key: string]: JsonValue } = {};
    if (!peek()) throw parseError("premature EOI");
    if (peek()!.kind === "}") {
      i++;
      return out;
    }
    pair(out);
    for (let t = pop(); t.kind !== "}"; t = pop()) {
      if (t.kind !== ",") throw parseError("expected separator in dict");
      pair(out);
    }
    return out;
  };
  const array = (): JsonValue => {
    i++;
    const out: JsonValue[] = [];
    if (!peek()) throw parseError("premature EOI");
    if (peek()!.kind === "]") {
      i++;
      return out;
    }
    out.push(value());
    for (let t = pop(); t.kind !== "]"; t = pop()) {
      if (t.kind !== ",") throw parseError("expected separator in list");
      out.push(value());
    }
    return out;
  };
  return value();
}

const ESCAPES: Record<string, string> = {
  '"': '"',
  "'": "'",
  "\\": "\\",
  "/": "/",
  b: "\b",
  f: "\f",
  n: "\n",
  r: "\r",
  t: "\t",
};

/** Whether QEMU's modified UTF-8 has `cp` (no surrogates, no noncharacters). */
function validCodePoint(cp: number): boolean {
  if (cp < 0 || cp > 0x10ffff) return false;
  if ((cp >= 0xfdd0 && cp <= 0xfdef) || (cp & 0xfffe) === 0xfffe) return false;
  return cp < 0xd800 || cp > 0xdfff;
}

function hex4(s: string): number {
  return /^[0-9a-fA-F]{4}$/.test(s) ? parseInt(s, 16) : -1;
}

/** QEMU's `parse_string`: the value of a quoted string token. */
function parseString(token: string): string {
  const chars = [...token];
  const quote = chars[0]!;
  let out = "";
  let i = 1;
  while (chars[i] !== quote) {
    const c = chars[i]!;
    if (c !== "\\") {
      if (!validCodePoint(c.codePointAt(0)!)) throw parseError("invalid UTF-8 sequence in string");
      out += c;
      i++;
      continue;
    }
    const begin = i;
    const e = chars[i + 1]!;
    i += 2;
    if (e !== "u") {
      if (!(e in ESCAPES)) throw parseError("invalid escape sequence in string");
      out += ESCAPES[e];
      continue;
    }
    let cp = hex4(chars.slice(i, i + 4).join(""));
    i += 4;
    if (cp >= 0xd800 && cp <= 0xdbff && chars[i] === "\\" && chars[i + 1] === "u") {
      const trailing = hex4(chars.slice(i + 2, i + 6).join(""));
      if (trailing >= 0xdc00 && trailing <= 0xdfff) {
        cp = 0x10000 + ((cp & 0x3ff) << 10) + (trailing & 0x3ff);
        i += 6;
      } else {
        cp = -1;
      }
    }
    if (!validCodePoint(cp)) {
      throw parseError(`${chars.slice(begin, i).join("")} is not a valid Unicode character`);
    }
    out += String.fromCodePoint(cp);
  }
  return out;
}

/**
 * `s` quoted as QEMU's JSON writer quotes strings: `"` `\` and the usual control characters
 * escaped by name, anything else outside printable ASCII as `\uXXXX` (surrogate pairs beyond
 * the BMP).
 *
 * @example
 * ```ts
 * import { qemuJsonString } from "@blockgraph/core";
 * console.assert(qemuJsonString('é"/') === '"\\u00E9\\"/"');
 * ```
 */
export function qemuJsonString(s: string): string {
  let out = '"';
  for (const c of s) {
    switch (c) {
      case '"':
        out += '\\"';
        continue;
      case "\\":
        out += "\\\\";
        continue;
      case "\b":
        out += "\\b";
        continue;
      case "\f":
        out += "\\f";
        continue;
      case "\n":
        out += "\\n";
        continue;
      case "\r":
        out += "\\r";
        continue;
      case "\t":
        out += "\\t";
        continue;
    }
    const cp = c.codePointAt(0)!;
    if (cp >= 0x20 && cp < 0x7f) out += c;
    else if (cp > 0xffff) {
      out += `\\u${hex(0xd800 + ((cp - 0x10000) >> 10))}\\u${
        hex(0xdc00 + ((cp - 0x10000) & 0x3ff))
      }`;
    } else out += `\\u${hex(cp)}`;
  }
  return out + '"';
}

const hex = (n: number) => n.toString(16).toUpperCase().padStart(4, "0");

/**
 * A number as QEMU's JSON writer prints it: integers in full, other numbers as C's `%.17g`.
 *
 * @example
 * ```ts
 * import { qemuJsonNumber } from "@blockgraph/core";
 * console.assert(qemuJsonNumber(0.1) === "0.10000000000000001");
 * ```
 */
export function qemuJsonNumber(n: number): string {
  if (Number.isInteger(n) && Math.abs(n) < 2 ** 64) return BigInt(n).toString();
  if (!Number.isFinite(n)) return Number.isNaN(n) ? "nan" : n > 0 ? "inf" : "-inf";
  const [mantissa, expText] = n.toExponential(16).split("e");
  const exp = Number(expText);
  const strip = (s: string) => s.includes(".") ? s.replace(/0+$/, "").replace(/\.$/, "") : s;
  if (exp < -4 || exp >= 17) {
    return `${strip(mantissa!)}e${exp < 0 ? "-" : "+"}${String(Math.abs(exp)).padStart(2, "0")}`;
  }
  return strip(n.toFixed(16 - exp));
}

/**
 * `value` as QEMU's `qobject_to_json` writes it: on one line, `", "` and `": "` between
 * members, dictionary keys in the order a QDict built by inserting them in order gives them
 * back (see {@link qdictKeys}).
 *
 * @example
 * ```ts
 * import { qemuJson } from "@blockgraph/core";
 * console.assert(qemuJson({ driver: "raw", offset: 512 }) === '{"offset": 512, "driver": "raw"}');
 * ```
 */
export function qemuJson(value: unknown): string {
  if (value === null || value === undefined) return "null";
  if (typeof value === "string") return qemuJsonString(value);
  if (typeof value === "number") return qemuJsonNumber(value);
  if (typeof value === "boolean") return value ? "true" : "false";
  if (Array.isArray(value)) return `[${value.map(qemuJson).join(", ")}]`;
  const obj = value as Record<string, unknown>;
  const keys = qdictKeys(Object.keys(obj).filter((k) => obj[k] !== undefined));
  return `{${keys.map((k) => `${qemuJsonString(k)}: ${qemuJson(obj[k])}`).join(", ")}}`;
}
