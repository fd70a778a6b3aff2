/**
 * qemu-io's commands about the session: `open`, `close`, `reopen`, `quit`, `sleep`,
 * `sigraise`, `abort`, and the blkdebug breakpoint commands.
 *
 * @module
 */

import { BlockError, type OptionValues, Perm, strerror, unflatten } from "@blockgraph/core";
import {
  type CacheMode,
  DEFAULT_CACHE,
  parseAioMode,
  parseCacheMode,
  parseDiscardMode,
} from "../common/open_image.ts";
import { parseQemuOpts } from "../common/qemu_opts.ts";
import { FAILED, type IoCommand, number, parseArgs, strtol0, usage } from "./command.ts";
import type { IoSession } from "./session.ts";

/** Parses `-o` strings into nested options; `null` after printing why not. */
export function collectOpts(s: IoSession, texts: readonly string[]): OptionValues | null {
  const flat: Record<string, string> = {};
  for (const text of texts) {
    const r = parseQemuOpts(text);
    for (const w of r.warnings) s.report(w);
    Object.assign(flat, r.values);
  }
  try {
    return unflatten(flat);
  } catch (e) {
    s.report(BlockError.from(e).message);
    return null;
  }
}

/** `open [-rsCnkU] [-t cache] [-d discard] [-i aio] [-o options] [path]`. */
export const openCommand: IoCommand = {
  name: "open",
  altname: "o",
  argmin: 1,
  argmax: -1,
  noFileOk: true,
  async run(s, argv) {
    const p = parseArgs(s, "open", argv, "snCro:kt:d:i:U");
    if ("failed" in p) return p.failed;
    let readOnly = false, snapshot = false, copyOnRead = false, forceShare = false;
    let cache: CacheMode = DEFAULT_CACHE;
    let discard: "ignore" | "unmap" = "unmap";
    let aio: string | undefined;
    const optTexts: string[] = [];
    for (const o of p.options) {
      switch (o.key) {
        case "s":
          snapshot = true;
          break;
        case "n":
          cache = { direct: true, noFlush: cache.noFlush, writethrough: false };
          break;
        case "C":
          copyOnRead = true;
          break;
        case "r":
          readOnly = true;
          break;
        case "U":
          forceShare = true;
          break;
        case "o":
          optTexts.push(o.value!);
          break;
        case "k":
          aio = "native";
          break;
        case "t": {
          const c = parseCacheMode(o.value!);
          if (!c) {
            s.report(`Invalid cache option: ${o.value}`);
            return FAILED;
          }
          cache = c;
          break;
        }
        case "d": {
          const d = parseDiscardMode(o.value!);
          if (!d) {
            s.report(`Invalid discard option: ${o.value}`);
            return FAILED;
          }
          discard = d;
          break;
        }
        case "i": {
          const a = parseAioMode(o.value!);
          if (!a) {
            s.report(`Invalid aio option: ${o.value}`);
            return FAILED;
          }
          aio = a;
          break;
        }
      }
    }
    const options = collectOpts(s, optTexts);
    if (options === null) return FAILED;
    if (p.operands.length > 1) return usage(s, "open");
    const name = p.operands[0] ?? null;
    const rc = await s.openFile(name, {
      filename: name,
      options,
      readOnly,
      cache,
      discard,
      aio: aio === "threads" ? undefined : aio,
      forceShare,
    }, { snapshot, copyOnRead });
    return rc === 0 ? 0 : FAILED;
  },
};

/** `close`: completes outstanding requests and closes the image. */
export const closeCommand: IoCommand = {
  name: "close",
  altname: "c",
  argmin: 0,
  argmax: 0,
  async run(s) {
    await s.closeFile();
    return 0;
  },
};

/** `quit`: ends the session; arguments are ignored. */
export const quitCommand: IoCommand = {
  name: "quit",
  altname: "q",
  argmin: 0,
  argmax: -1,
  noFileOk: true,
  run(s) {
    s.quit = true;
    return Promise.resolve(0);
  },
};

/** `reopen [(-r|-w)] [-c cache] [-o options]`: changes the open options in place. */
export const reopenCommand: IoCommand = {
  name: "reopen",
  argmin: 0,
  argmax: -1,
  async run(s, argv) {
    const p = parseArgs(s, "reopen", argv, "c:o:rw");
    if ("failed" in p) return p.failed;
    const node = s.node!;
    const blk = s.backend!;
    let readOnly = node.flags.readOnly;
    let rwGiven = false;
    let cache: CacheMode = {
      direct: node.flags.cacheDirect,
      noFlush: node.flags.cacheNoFlush,
      writethrough: !blk.enableWriteCache,
    };
    const optTexts: string[] = [];
    for (const o of p.options) {
      if (o.key === "c") {
        const c = parseCacheMode(o.value!);
        if (!c) {
          s.report(`Invalid cache option: ${o.value}`);
          return FAILED;
        }
        cache = c;
      } else if (o.key === "o") {
        optTexts.push(o.value!);
      } else {
        if (rwGiven) {
          s.report("Only one -r/-w option may be given");
          return FAILED;
        }
        rwGiven = true;
        readOnly = o.key === "r";
      }
    }
    if (p.operands.length !== 0) return usage(s, "reopen");
    const given = collectOpts(s, optTexts);
    if (given === null) return FAILED;
    const options: OptionValues = {
      ...node.options,
      "read-only": readOnly,
      cache: { direct: cache.direct, "no-flush": cache.noFlush },
      discard: node.flags.discard,
      "detect-zeroes": node.flags.detectZeroes,
      ...given,
    };
    for (const c of node.children) {
      if ((c.name === "file" || c.name === "backing") && c.node && !(c.name in given)) {
        options[c.name] = c.node.name;
      }
    }
    if (readOnly) {
      await s.drainAio();
      blk.setPerm(blk.root!.perm & ~(Perm.WRITE | Perm.WRITE_UNCHANGED), blk.root!.shared);
    }
    try {
      await s.graph.reopen(node, options);
    } catch (e) {
      s.report(BlockError.from(e).message);
      return FAILED;
    }
    blk.enableWriteCache = !cache.writethrough;
    return 0;
  },
};

/** `sleep ms`: waits. */
export const sleepCommand: IoCommand = {
  name: "sleep",
  argmin: 1,
  argmax: 1,
  noFileOk: true,
  async run(s, argv) {
    const ms = strtol0(argv[1]!);
    if (ms === null || ms < 0) {
      s.out(`${argv[1]} is not a valid number\n`);
      return FAILED;
    }
    await new Promise((r) => setTimeout(r, ms));
    return 0;
  },
};

/** The number of signals, C's `NSIG` on Linux. */
const NSIG = 65;

/** `sigraise signal`: raises a signal on the process. */
export const sigraiseCommand: IoCommand = {
  name: "sigraise",
  argmin: 1,
  argmax: 1,
  noFileOk: true,
  run(s, argv) {
    const sig = number(s, argv[1]!);
    if (sig === null) return Promise.resolve(FAILED);
    if (sig > NSIG) {
      s.out(`signal argument '${argv[1]}' is too large to be a valid signal\n`);
      return Promise.resolve(FAILED);
    }
    s.raise(sig);
    return Promise.resolve(0);
  },
};

/** `abort`: simulates a crash with SIGABRT. */
export const abortCommand: IoCommand = {
  name: "abort",
  argmin: 0,
  argmax: 0,
  noFileOk: true,
  run(s) {
    s.raise(6);
    return Promise.resolve(0);
  },
};

/** No node in our graphs takes blkdebug breakpoints yet: QEMU's answer for such nodes. */
function noBreakpoints(s: IoSession, text: string): Promise<number> {
  s.out(`${text}: ${strerror("ENOTSUP")}\n`);
  return Promise.resolve(FAILED);
}

/** `break event tag`. */
export const breakCommand: IoCommand = {
  name: "break",
  argmin: 2,
  argmax: 2,
  run: (s) => noBreakpoints(s, "Could not set breakpoint"),
};

/** `remove_break tag`. */
export const removeBreakCommand: IoCommand = {
  name: "remove_break",
  argmin: 1,
  argmax: 1,
  run: (s, argv) => noBreakpoints(s, `Could not remove breakpoint ${argv[1]}`),
};

/** `resume tag`. */
export const resumeCommand: IoCommand = {
  name: "resume",
  argmin: 1,
  argmax: 1,
  run: (s) => noBreakpoints(s, "Could not resume request"),
};

/**
 * `wait_break tag`. QEMU waits forever when no blkdebug node can suspend the request; we
 * say so and fail instead of hanging.
 */
export const waitBreakCommand: IoCommand = {
  name: "wait_break",
  argmin: 1,
  argmax: 1,
  run(s, argv) {
    s.report(`no blkdebug node can suspend a request tagged '${argv[1]}'`);
    return Promise.resolve(FAILED);
  },
};
