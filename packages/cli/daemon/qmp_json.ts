/**
 * JSON as QEMU's monitor reads and writes it: a streaming splitter that finds each complete
 * value in a byte stream (QEMU's json-streamer: brace and bracket counting over tokens), a
 * parser whose errors carry QEMU's words ("JSON parse error, invalid keyword 'bad'"), single
 * quoted strings as QEMU's extension, and output formatted as QEMU prints it
 * (`{"return": {}, "id": 1}`).
 *
 * @module
 */

/** A JSON value as parsed. */
export type JsonValue =
  | null
  | boolean
  | number
  | string
  | JsonValue[]
  | { [key: string]: JsonValue };

/** A JSON text that could not be parsed; `message` is QEMU's ("JSON parse error, ..."). */
export class JsonParseError extends Error {
  /** Creates the error for `reason` ("expecting value"). */
  constructor(reason: string) {
    super(`JSON parse error, ${reason}`);
    this.name = "JsonParseError";
  }
}

type TokenKind = "{" | "}" | "[" | "]" | ":" | "," | "string" | "number" | "keyword";

interface Token {
  kind: TokenKind;
  text: string;
}

/** What the streamer found: a complete value's tokens, or a lexical error. */
type Emitted = { tokens: Token[] } | { error: string };

const NUMBER = /^-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?$/;

/**
 * Splits a stream of text into JSON values, as QEMU's json-streamer does: a value is
 * complete when braces and brackets balance after a token; a lexical error ends the value
 * being collected.
 */
export class JsonStreamer {
  #tokens: Token[] = [];
  #depth = 0;
  /** The token being read: a string (with its quote), a number or a keyword. */
  #partial = "";
  #inString: '"' | "'" | null = null;
  #escape = false;

  /** Feeds `text`; returns each complete value (parsed) or its error, in order. */
  feed(text: string): (JsonValue | JsonParseError)[] {
    const out: (JsonValue | JsonParseError)[] = [];
    const emit = (e: Emitted) => {
      if ("error" in e) out.push(new JsonParseError(e.error));
      else {
        try {
          out.push(parseTokens(e.tokens));
        } catch (err) {
          if (err instanceof JsonParseError) out.push(err);
          else throw err;
        }
      }
    };
    for (const ch of text) {
      if (this.#inString) {
        this.#partial += ch;
        if (this.#escape) this.#escape = false;
        else if (ch === "\\") this.#escape = true;
        else if (ch === this.#inString) {
          this.#inString = null;
          this.#push({ kind: "string", text: this.#partial }, emit);
          this.#partial = "";
        }
        continue;
      }
      if (this.#partial !== "" && !/[-+.0-9a-zA-Z]/.test(ch)) this.#endWord(emit);
      if (ch === '"' || ch === "'") {
        this.#inString = ch;
        this.#partial = ch;
      } else if (/[-+.0-9a-zA-Z]/.test(ch)) {
        this.#partial += ch;
      } else if ("{}[]:,".includes(ch)) {
        this.#push({ kind: ch as TokenKind, text: ch }, emit);
      } else if (!/\s/.test(ch)) {
        this.#reset();
        emit({ error: `stray '${ch}'` });
      }
    }
    return out;
  }

  /** Ends the input: whatever was collected is parsed now (it is incomplete: an error). */
  flush(): (JsonValue | JsonParseError)[] {
    const out = this.feed(" ");
    if (this.#inString) {
      this.#inString = null;
      this.#partial = "";
      this.#reset();
      out.push(new JsonParseError("premature EOI"));
    } else if (this.#tokens.length > 0) {
      const tokens = this.#tokens;
      this.#reset();
      try {
        out.push(parseTokens(tokens));
      } catch (err) {
        if (!(err instanceof JsonParseError)) throw err;
        out.push(err);
      }
    }
    return out;
  }

  #endWord(emit: (e: Emitted) => void): void {
    const word = this.#partial;
    this.#partial = "";
    if (/^[a-zA-Z]+$/.test(word)) this.#push({ kind: "keyword", text: word }, emit);
    else if (NUMBER.test(word)) this.#push({ kind: "number", text: word }, emit);
    else {
      this.#reset();
      emit({ error: `stray '${word}'` });
    }
  }

  #push(token: Token, emit: (e: Emitted) => void): void {
    this.#tokens.push(token);
    if (token.kind === "{" || token.kind === "[") this.#depth++;
    else if (token.kind === "}" || token.kind === "]") this.#depth--;
    if (this.#depth <= 0) {
      const tokens = this.#tokens;
      this.#reset();
      emit({ tokens });
    }
  }

  #reset(): void {
    this.#tokens = [];
    this.#depth = 0;
  }
}

/**
 * Parses one complete JSON text with QEMU's extensions and messages (used for `--blockdev`
 * JSON on the command line).
 *
 * @example
 * ```ts
 * import { parseQmpJson } from "./qmp_json.ts";
 * console.assert((parseQmpJson("{'a': 1}") as { a: number }).a === 1);
 * ```
 */
export function parseQmpJson(text: string): JsonValue {
  const s = new JsonStreamer();
  const values = [...s.feed(text), ...s.flush()];
  if (values.length === 0) throw new JsonParseError("premature EOI");
  const first = values[0]!;
  if (first instanceof JsonParseError) throw first;
  if (values.length > 1) throw new JsonParseError("expecting end of input");
  return first;
}

function parseTokens(tokens: Token[]): JsonValue {
  let i = 0;
  const peek = (): Token | undefined => tokens[i];
  const next = (): Token | undefined => tokens[i++];
  const value = (): JsonValue => {
    const t = peek();
    if (!t) throw new JsonParseError("premature EOI");
    switch (t.kind) {
      case "{":
        return object();
      case "[":
        return array();
      case "string":
        i++;
        return unescape(t.text);
      case "number":
        i++;
        return Number(t.text);
      case "keyword":
        i++;
        if (t.text === "true") return true;
        if (t.text === "false") return false;
        if (t.text === "null") return null;
        throw new JsonParseError(`invalid keyword '${t.text}'`);
      default:
        throw new JsonParseError("expecting value");
    }
  };
  const object = (): JsonValue => {
    next();
    const out: { [key: string]: JsonValue } = {};
    if (peek()?.kind === "}") {
      next();
      return out;
    }
    for (;;) {
      if (!peek()) throw new JsonParseError("premature EOI");
      const key = value();
      if (typeof key !== "string") throw new JsonParseError("key is not a string in object");
      const colon = next();
      if (!colon) throw new JsonParseError("premature EOI");
      if (colon.kind !== ":") throw new JsonParseError("missing : in object pair");
      if (!peek()) throw new JsonParseError("premature EOI");
      out[key] = value();
      const sep = next();
      if (!sep) throw new JsonParseError("premature EOI");
      if (sep.kind === "}") return out;
      if (sep.kind !== ",") throw new JsonParseError("expected separator in dict");
    }
  };
  const array = (): JsonValue => {
    next();
    const out: JsonValue[] = [];
    if (peek()?.kind === "]") {
      next();
      return out;
    }
    for (;;) {
      out.push(value());
      const sep = next();
      if (!sep) throw new JsonParseError("premature EOI");
      if (sep.kind === "]") return out;
      if (sep.kind !== ",") throw new JsonParseError("expected separator in list");
    }
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

function unescape(quoted: string): string {
  const body = quoted.slice(1, -1);
  let out = "";
  for (let i = 0; i < body.length; i++) {
    const c = body[i]!;
    if (c !== "\\") {
      out += c;
      continue;
    }
    const e = body[++i] ?? "";
    if (e === "u") {
      const hex = body.slice(i + 1, i + 5);
      if (!/^[0-9a-fA-F]{4}$/.test(hex)) {
        throw new JsonParseError("invalid hex escape sequence in string");
      }
      out += String.fromCharCode(parseInt(hex, 16));
      i += 4;
    } else if (e in ESCAPES) {
      out += ESCAPES[e];
    } else {
      throw new JsonParseError("invalid escape sequence in string");
    }
  }
  return out;
}

/**
 * Formats `value` as QEMU prints QMP output: `{"key": value, "list": [1, 2]}` on one line.
 *
 * @example
 * ```ts
 * import { formatQmpJson } from "./qmp_json.ts";
 * console.assert(formatQmpJson({ return: {}, id: 1 }) === '{"return": {}, "id": 1}');
 * ```
 */
export function formatQmpJson(value: unknown): string {
  if (value === null || value === undefined) return "null";
  if (Array.isArray(value)) return `[${value.map(formatQmpJson).join(", ")}]`;
  if (typeof value === "object") {
    const toJSON = (value as { toJSON?: () => unknown }).toJSON;
    if (typeof toJSON === "function") return formatQmpJson(toJSON.call(value));
    const parts: string[] = [];
    for (const [k, v] of Object.entries(value)) {
      if (v !== undefined) parts.push(`${JSON.stringify(k)}: ${formatQmpJson(v)}`);
    }
    return `{${parts.join(", ")}}`;
  }
  if (typeof value === "number" && !Number.isFinite(value)) return "null";
  return JSON.stringify(value);
}
