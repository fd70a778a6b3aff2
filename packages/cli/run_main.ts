/**
 * The `blockgraph` command's dispatch: `img ...`, `io ...`, `daemon ...`, `--help`.
 *
 * @module
 */

import type { CliIo } from "./common/cli_io.ts";
import { runDaemon } from "./daemon/run_daemon.ts";
import { runImg } from "./img/run_img.ts";
import { runIo } from "./io/run_io.ts";

/** The top-level help text. */
export const MAIN_USAGE = `Usage: blockgraph COMMAND [ARGS]...
A storage block layer.

Commands:
  img    disk image utility (speaks qemu-img)
  io     disk exerciser (speaks qemu-io)
  daemon storage daemon: QMP monitor and NBD exports (speaks qemu-storage-daemon)

Run 'blockgraph COMMAND --help' for a command's options.
`;

/**
 * Runs `blockgraph` with `args` (without the program name); returns the exit status.
 *
 * @example
 * ```ts
 * import { captureIo } from "./common/cli_io.ts";
 * import { runMain } from "./run_main.ts";
 * const io = captureIo();
 * console.assert(await runMain(["--help"], io) === 0);
 * ```
 */
export async function runMain(args: readonly string[], io: CliIo): Promise<number> {
  const [command, ...rest] = args;
  switch (command) {
    case "img":
      return await runImg(rest, io);
    case "io":
      return await runIo(rest, io);
    case "daemon":
      return await runDaemon(rest, io);
    case "-h":
    case "--help":
    case "help":
      io.out(MAIN_USAGE);
      return 0;
    case undefined:
      io.err("blockgraph: missing command\n" + MAIN_USAGE);
      return 1;
    default:
      io.err(`blockgraph: unknown command '${command}'\nTry 'blockgraph --help'\n`);
      return 1;
  }
}
