/**
 * One QMP session with qemu-storage-daemon, or with our daemon, for differential tests that
 * run the same commands through both: each starts the daemon with a monitor on `sock`,
 * connects (negotiated), hands the client to `fn`, and stops the daemon afterwards.
 *
 * @module
 */

import { addMonitor, createDaemon } from "../packages/cli/daemon/run_daemon.ts";
import { TestQmpClient } from "../packages/cli/daemon/testing_qmp_client.ts";
import { spawnPeer } from "./peer_run.ts";

/** Runs `fn` on a QMP client of a fresh qemu-storage-daemon whose monitor is `sock`. */
export async function qsdSession<T>(
  sock: string,
  fn: (q: TestQmpClient) => Promise<T>,
): Promise<T> {
  const qsd = await spawnPeer("qemu-storage-daemon", [
    "--chardev",
    `socket,id=m,path=${sock},server=on,wait=off`,
    "--monitor",
    "chardev=m",
  ], () => TestQmpClient.socketExists(sock));
  try {
    const q = await TestQmpClient.connectRetrying(sock);
    try {
      return await fn(q);
    } finally {
      await q.close();
    }
  } finally {
    await qsd.stop();
  }
}

/** Runs `fn` on a QMP client of a fresh in-process blockgraph daemon whose monitor is `sock`. */
export async function ourDaemonSession<T>(
  sock: string,
  fn: (q: TestQmpClient) => Promise<T>,
): Promise<T> {
  const daemon = createDaemon();
  addMonitor(daemon, sock);
  try {
    const q = await TestQmpClient.connect(sock);
    try {
      return await fn(q);
    } finally {
      await q.close();
    }
  } finally {
    await daemon.shutdown();
  }
}
