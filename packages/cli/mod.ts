/**
 * `@blockgraph/cli`: the `blockgraph` command. `img` speaks qemu-img's command line, `io`
 * speaks qemu-io's, `daemon` speaks qemu-storage-daemon's (a QMP
 * monitor and NBD exports). Each runs in-process with injectable standard
 * streams, so tests capture output without spawning.
 *
 * @module
 */

export { captureIo, denoIo } from "./common/cli_io.ts";
export type { CapturedIo, CliIo } from "./common/cli_io.ts";
export { runIo } from "./io/run_io.ts";
export type { RunIoOptions } from "./io/run_io.ts";
export { runImg } from "./img/run_img.ts";
export { runDaemon } from "./daemon/run_daemon.ts";
export type { RunDaemonOptions } from "./daemon/run_daemon.ts";
export { MAIN_USAGE, runMain } from "./run_main.ts";
