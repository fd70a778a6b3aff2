/**
 * A daemon for the QMP command tests: a fresh temporary folder, a daemon with a QMP monitor
 * on `qmp.sock` in it, and a {@link TestQmpClient} connected to that monitor. `await using`
 * closes the client, shuts the daemon down and removes the folder. Test support only; not
 * part of the published package.
 *
 * @module
 */

import type { Daemon } from "./daemon.ts";
import { addMonitor, createDaemon } from "./run_daemon.ts";
import { TestQmpClient } from "./testing_qmp_client.ts";

/** A running daemon, its folder and a QMP client; disposing of it stops all three. */
export interface QmpDaemon {
  /** The temporary folder (holding `qmp.sock`). */
  dir: string;
  /** The daemon. */
  daemon: Daemon;
  /** A client connected to the daemon's monitor. */
  q: TestQmpClient;
  /** Closes the client, shuts the daemon down and removes the folder. */
  [Symbol.asyncDispose](): Promise<void>;
}

/** Starts a daemon with a monitor in a new temporary folder named with `prefix`. */
export async function startQmpDaemon(prefix: string): Promise<QmpDaemon> {
  const dir = await Deno.makeTempDir({ prefix });
  const daemon = createDaemon();
  addMonitor(daemon, `${dir}/qmp.sock`);
  const q = await TestQmpClient.connect(`${dir}/qmp.sock`);
  return {
    dir,
    daemon,
    q,
    async [Symbol.asyncDispose]() {
      await q.close();
      await daemon.shutdown();
      await Deno.remove(dir, { recursive: true });
    },
  };
}
