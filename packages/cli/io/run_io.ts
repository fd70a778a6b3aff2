/**
 * `blockgraph io`: qemu-io's command line. Options as QEMU 7.2's qemu-io parses them (each
 * `--object` created in the session's graph as it is met, as qemu-img's), the image opened as
 * it opens it, `-c` commands run in order (or commands read from standard input, each after a
 * `qemu-io> ` prompt), and exit status 1 when any command failed.
 *
 * @module
 */

import { Graph } from "@blockgraph/core";
import { defaultRegistry } from "@blockgraph/drivers";
import type { CliIo } from "../common/cli_io.ts";
import { getopt, glibcMessage, type LongOption } from "../common/getopt.ts";
import { addObjectOption } from "../common/object_option.ts";
import {
  type CacheMode,
  DEFAULT_CACHE,
  parseAioMode,
  parseCacheMode,
  parseDiscardMode,
} from "../common/open_image.ts";
import { runCommand } from "./dispatch.ts";
import { collectOpts } from "./session_commands.ts";
import { IoSession, type SignalRaiser } from "./session.ts";
import { versionText } from "../common/version.ts";

/** qemu-io's `--help` text. */
export const IO_USAGE = `Usage: qemu-io [OPTIONS]... [-c STRING]... [file]
QEMU Disk exerciser

  --object OBJECTDEF   define an object such as 'secret' for
                       passwords and/or encryption keys
  --image-opts         treat file as option string
  -c, --cmd STRING     execute command with its arguments
                       from the given string
  -f, --format FMT     specifies the block driver to use
  -r, --read-only      export read-only
  -s, --snapshot       use snapshot file
  -n, --nocache        disable host cache, short for -t none
  -C, --copy-on-read   enable copy-on-read
  -m, --misalign       misalign allocations for O_DIRECT
  -k, --native-aio     use kernel AIO implementation
                       (Linux only, prefer use of -i)
  -i, --aio=MODE       use AIO mode (threads, native or io_uring)
  -t, --cache=MODE     use the given cache mode for the image
  -d, --discard=MODE   use the given discard mode for the image
  -T, --trace [[enable=]<pattern>][,events=<file>][,file=<file>]
                       specify tracing options
                       see qemu-img(1) man page for full description
  -U, --force-share    force shared permissions
  -h, --help           display this help and exit
  -V, --version        output version information and exit

See 'qemu-io -c help' for information on available commands.

See <https://qemu.org/contribute/report-a-bug> for how to report bugs.
More information on the QEMU project at <https://qemu.org>.
`;

/** The version text (`-V`), as qemu-io's (see `common/version.ts`). */
export const IO_VERSION: string = versionText("qemu-io");

const LONG_OPTIONS: LongOption[] = [
  { name: "help", arg: "none", key: "h" },
  { name: "version", arg: "none", key: "V" },
  { name: "cmd", arg: "required", key: "c" },
  { name: "format", arg: "required", key: "f" },
  { name: "read-only", arg: "none", key: "r" },
  { name: "snapshot", arg: "none", key: "s" },
  { name: "nocache", arg: "none", key: "n" },
  { name: "copy-on-read", arg: "none", key: "C" },
  { name: "misalign", arg: "none", key: "m" },
  { name: "native-aio", arg: "none", key: "k" },
  { name: "aio", arg: "required", key: "i" },
  { name: "discard", arg: "required", key: "d" },
  { name: "cache", arg: "required", key: "t" },
  { name: "trace", arg: "required", key: "T" },
  { name: "object", arg: "required", key: "object" },
  { name: "image-opts", arg: "none", key: "image-opts" },
  { name: "force-share", arg: "none", key: "U" },
];

/** Options for {@link runIo} beyond the arguments. */
export interface RunIoOptions {
  /** How `abort` and `sigraise` raise signals (default: on this process). */
  readonly raise?: SignalRaiser;
}

/**
 * Runs qemu-io with `args` (without the program name); returns the exit status.
 *
 * @example
 * ```ts
 * import { captureIo } from "../common/cli_io.ts";
 * import { runIo } from "./run_io.ts";
 * const io = captureIo();
 * const status = await runIo(["-c", "help"], io);
 * console.assert(status === 0 && io.stdout.includes("read [-abCqv]"));
 * ```
 */
export async function runIo(
  args: readonly string[],
  io: CliIo,
  options: RunIoOptions = {},
): Promise<number> {
  const r = getopt(args, "hVc:d:f:rsnCmki:t:T:U", LONG_OPTIONS);
  const report = (m: string) => io.err(`qemu-io: ${m}\n`);
  const commands: string[] = [];
  let format: string | undefined;
  let readOnly = false, snapshot = false, copyOnRead = false, forceShare = false;
  let imageOpts = false;
  let cache: CacheMode = DEFAULT_CACHE;
  let discard: "ignore" | "unmap" = "unmap";
  let aio: string | undefined;
  // `--object`s go into the graph the image opens in, as they are met.
  const graph = new Graph({ registry: defaultRegistry() });
  for (const o of r.options) {
    const v = o.value!;
    switch (o.key) {
      case "h":
        io.out(IO_USAGE);
        return 0;
      case "V":
        io.out(IO_VERSION);
        return 0;
      case "c":
        commands.push(v);
        break;
      case "f":
        format = v;
        break;
      case "r":
        readOnly = true;
        break;
      case "s":
        snapshot = true;
        break;
      case "n":
        cache = { direct: true, noFlush: cache.noFlush, writethrough: false };
        break;
      case "C":
        copyOnRead = true;
        break;
      case "k":
        aio = "native";
        break;
      case "i": {
        const a = parseAioMode(v);
        if (!a) {
          report(`Invalid aio option: ${v}`);
          return 1;
        }
        aio = a;
        break;
      }
      case "d": {
        const d = parseDiscardMode(v);
        if (!d) {
          report(`Invalid discard option: ${v}`);
          return 1;
        }
        discard = d;
        break;
      }
      case "t": {
        const c = parseCacheMode(v);
        if (!c) {
          report(`Invalid cache option: ${v}`);
          return 1;
        }
        cache = c;
        break;
      }
      case "object": {
        const stop = addObjectOption(graph, io, v, report);
        if (stop !== null) return stop;
        break;
      }
      case "image-opts":
        imageOpts = true;
        break;
      case "U":
        forceShare = true;
        break;
    }
  }
  if (r.error) {
    io.err(glibcMessage("qemu-io", r.error) + "\n");
    io.out(IO_USAGE);
    return 1;
  }
  if (r.operands.length > 1) {
    io.out(IO_USAGE);
    return 1;
  }
  if (imageOpts && format !== undefined) {
    report("--image-opts and -f are mutually exclusive");
    return 1;
  }
  const s = new IoSession(io, options.raise, graph);
  try {
    if (r.operands.length === 1) {
      const arg = r.operands[0]!;
      let given = {};
      if (imageOpts) {
        const parsed = collectOpts(s, [arg]);
        if (parsed === null) return 1;
        given = parsed;
      }
      const name = imageOpts ? null : arg;
      const rc = await s.openFile(name, {
        filename: name,
        format,
        options: given,
        readOnly,
        cache,
        discard,
        aio,
        forceShare,
      }, { snapshot, copyOnRead });
      if (rc !== 0) return 1;
    }
    let failed = false;
    if (commands.length > 0) {
      for (const c of commands) {
        if (s.quit) break;
        if ((await runCommand(s, c)) !== 0) failed = true;
      }
    } else {
      while (!s.quit) {
        io.out("qemu-io> ");
        const line = await io.readLine();
        if (line === null) break;
        if ((await runCommand(s, line)) !== 0) failed = true;
      }
    }
    return failed ? 1 : 0;
  } finally {
    await s.shutdown();
  }
}
