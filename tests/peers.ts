/**
 * Interop and benchmark peers (qemu-img, qemu-io, fio, ...) come from Debian packages. Tests call
 * {@link ensurePeers} and the packages are installed once, when missing.
 *
 * @module
 */

/** Debian package for each peer command. */
const PACKAGES: Record<string, string> = {
  "qemu-img": "qemu-utils",
  "qemu-io": "qemu-utils",
  "qemu-nbd": "qemu-utils",
  nbdinfo: "libnbd-bin",
  nbdcopy: "libnbd-bin",
  fio: "fio",
  nbdkit: "nbdkit",
  openssl: "openssl",
  certtool: "gnutls-bin",
  "qemu-storage-daemon": "qemu-system-common",
};

async function has(command: string): Promise<boolean> {
  const r = await new Deno.Command("sh", {
    args: ["-c", `command -v ${command}`],
    stdout: "null",
    stderr: "null",
  }).output();
  return r.success;
}

async function run(cmd: string, args: string[]): Promise<void> {
  const r = await new Deno.Command(cmd, {
    args,
    stdout: "piped",
    stderr: "piped",
    env: { DEBIAN_FRONTEND: "noninteractive" },
  }).output();
  if (!r.success) {
    throw new Error(`${cmd} ${args.join(" ")} failed:\n${new TextDecoder().decode(r.stderr)}`);
  }
}

let updated = false;

/** Installs the Debian packages that provide `commands`, when any is missing. */
export async function ensurePeers(commands: string[]): Promise<void> {
  const missing: string[] = [];
  for (const c of commands) {
    if (!(await has(c))) missing.push(PACKAGES[c] ?? c);
  }
  if (missing.length === 0) return;
  if (!updated) {
    await run("apt-get", ["update", "-qq"]);
    updated = true;
  }
  await run("apt-get", ["install", "-y", "-qq", "--no-install-recommends", ...new Set(missing)]);
}
