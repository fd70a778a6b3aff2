/**
 * Helpers of the qcow2 interop tests: running qemu-img and qemu-io, temporary folders, opening
 * an image with blockgraph, and checks against qemu-img.
 *
 * @module
 */
import { Graph, type Node } from "@blockgraph/core";
import { defaultRegistry, type Qcow2Instance } from "@blockgraph/drivers";
import { ensurePeers } from "./peers.ts";

/** 1024. */
export const KIB = 1024;

/** Runs a command; its exit code and output (stdout then stderr). */
export async function run(cmd: string, args: string[]): Promise<{ code: number; out: string }> {
  const r = await new Deno.Command(cmd, { args, stdout: "piped", stderr: "piped" }).output();
  const d = new TextDecoder();
  return { code: r.code, out: d.decode(r.stdout) + d.decode(r.stderr) };
}

/** Runs a command and fails with its output when it exits non-zero; its output. */
export async function must(cmd: string, args: string[]): Promise<string> {
  const r = await run(cmd, args);
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(" ")} failed (${r.code}):\n${r.out}`);
  return r.out;
}

/** `-c cmd` arguments (of qemu-io and `blockgraph io`) for each command. */
export function cmds(list: string[]): string[] {
  return list.flatMap((c) => ["-c", c]);
}

/** Fails with `message` unless `cond`. */
export function expect(cond: boolean, message: string): void {
  if (!cond) throw new Error(message);
}

/** Runs `fn` in a fresh temporary folder (after making sure qemu-img and qemu-io exist). */
export async function withDir(fn: (dir: string) => Promise<void>): Promise<void> {
  await ensurePeers(["qemu-img", "qemu-io"]);
  const dir = await Deno.makeTempDir({ prefix: "blockgraph-qcow2-ops-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** Opens the qcow2 image at `path` with `extra` options for `fn`, closing it after. */
export async function withImage(
  path: string,
  extra: Record<string, unknown>,
  fn: (node: Node, q: Qcow2Instance) => Promise<void>,
): Promise<void> {
  const graph = new Graph({ registry: defaultRegistry() });
  const node = await graph.open({ driver: "qcow2", file: { filename: path }, ...extra }, "test");
  try {
    await fn(node, node.instance as Qcow2Instance);
  } finally {
    await node.unref("test");
    await graph.closeAll();
  }
}

/** The counts of `qemu-img check --output=json`. */
export interface QemuCheck {
  corruptions?: number;
  leaks?: number;
  "check-errors"?: number;
}

/** `qemu-img check --output=json`'s counts. */
export async function qemuCheck(path: string): Promise<QemuCheck> {
  const r = await run("qemu-img", ["check", "--output=json", path]);
  const json = r.out.slice(r.out.indexOf("{"), r.out.lastIndexOf("}") + 1);
  return JSON.parse(json) as QemuCheck;
}

/** Fails unless `qemu-img check` finds nothing wrong. */
export async function expectQemuClean(path: string, label: string): Promise<void> {
  const r = await run("qemu-img", ["check", path]);
  if (r.code !== 0) throw new Error(`${label}: qemu-img check is not clean:\n${r.out}`);
}

/** Fails unless qemu-io reads `pat` in every byte of the range. */
export async function qemuRead(
  path: string,
  offset: number,
  len: number,
  pat: number,
): Promise<void> {
  const out = await must("qemu-io", ["-f", "qcow2", "-c", `read -P ${pat} ${offset} ${len}`, path]);
  expect(!out.includes("Pattern verification failed"), `${path}: pattern ${pat} at ${offset}`);
}

/** Overwrites bytes of a file (to corrupt an image on purpose). */
export async function writeBytes(path: string, offset: number, bytes: number[]): Promise<void> {
  const f = await Deno.open(path, { write: true });
  try {
    await f.seek(offset, Deno.SeekMode.Start);
    await f.write(new Uint8Array(bytes));
  } finally {
    f.close();
  }
}
