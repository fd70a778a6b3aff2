/**
 * Image locking as QEMU's `file-posix` does it, so that blockgraph and QEMU's tools see each
 * other's users of an image: open file description (OFD) read locks on single bytes of the
 * image file. For each permission bit `i` (QEMU's and ours are the same bits: consistent read,
 * write, write unchanged, resize), a user holding the permission locks byte `100 + i`, and a
 * user not sharing it locks byte `200 + i`. Before taking a permission, a user checks that no
 * one else locks `200 + i` ("Failed to get \"write\" lock"); before refusing to share one,
 * that no one else locks `100 + i` ("Failed to get shared \"write\" lock"). The locks go
 * with the descriptor when it closes.
 *
 * @module
 */

import { BlockError } from "@blockgraph/core";
import { lastErrno, libc } from "../io/libc.ts";

const F_OFD_GETLK = 36;
const F_OFD_SETLK = 37;
const F_RDLCK = 0;
const F_WRLCK = 1;
const F_UNLCK = 2;
const PERM_BASE = 100;
const SHARED_BASE = 200;
/** The permission bits that have lock bytes (QEMU's BLK_PERM_ALL). */
const PERM_BITS = 4;
const PERM_NAMES = ["consistent read", "write", "write unchanged", "resize"];

const flock = new Uint8Array(32);
const view = new DataView(flock.buffer);

/** `fcntl` with a `struct flock` of one byte at `offset`; the result (or -errno). */
function lockCall(fd: number, cmd: number, type: number, offset: number): number {
  flock.fill(0);
  view.setInt16(0, type, true);
  view.setInt16(2, 0, true);
  view.setBigInt64(8, BigInt(offset), true);
  view.setBigInt64(16, 1n, true);
  const rc = libc().fcntl(fd, cmd, flock);
  return rc < 0 ? -lastErrno() : rc;
}

/** Whether another open file description holds a lock on byte `offset` of `fd`'s file. */
function lockedByOthers(fd: number, offset: number): boolean {
  const rc = lockCall(fd, F_OFD_GETLK, F_WRLCK, offset);
  if (rc < 0) throw BlockError.fromErrno(-rc, "Failed to test an image lock");
  return view.getInt16(0, true) !== F_UNLCK;
}

/** Takes (a shared read lock) or drops the lock on byte `offset`. */
function setLock(fd: number, offset: number, on: boolean): void {
  const rc = lockCall(fd, F_OFD_SETLK, on ? F_RDLCK : F_UNLCK, offset);
  if (rc < 0) throw BlockError.fromErrno(-rc, `Failed to lock byte ${offset}`);
}

/** Whether OFD locks work here (the FFI is there and the file system takes them). */
export function locksAvailable(fd: number): boolean {
  try {
    return lockCall(fd, F_OFD_GETLK, F_WRLCK, PERM_BASE) >= 0;
  } catch {
    return false;
  }
}

/** The lock bytes one user set holds: its permissions, and those it does not share. */
export interface LockBits {
  /** Permissions held (bytes 100 + i). */
  readonly perm: number;
  /** Permissions not shared (bytes 200 + i). */
  readonly unshared: number;
}

/**
 * Fails with QEMU's messages when another user of the file conflicts with taking `perm` and
 * sharing only `shared`: one that does not share what we take, or holds what we do not share.
 * `path` goes in the hint.
 */
export function checkLocks(fd: number, perm: number, shared: number, path: string): void {
  for (let i = 0; i < PERM_BITS; i++) {
    const bit = 1 << i;
    if ((perm & bit) !== 0 && lockedByOthers(fd, SHARED_BASE + i)) {
      throw conflict(`Failed to get "${PERM_NAMES[i]}" lock`, path);
    }
  }
  for (let i = 0; i < PERM_BITS; i++) {
    const bit = 1 << i;
    if ((shared & bit) === 0 && lockedByOthers(fd, PERM_BASE + i)) {
      throw conflict(`Failed to get shared "${PERM_NAMES[i]}" lock`, path);
    }
  }
}

function conflict(message: string, path: string): BlockError {
  return new BlockError("EAGAIN", message, {
    hint: `Is another process using the image [${path}]?\n`,
  });
}

/** Moves `fd`'s lock bytes from `from` to `to`: takes the new ones, drops the ones gone. */
export function applyLocks(fd: number, from: LockBits, to: LockBits): void {
  for (let i = 0; i < PERM_BITS; i++) {
    const bit = 1 << i;
    if ((to.perm & bit) !== (from.perm & bit)) setLock(fd, PERM_BASE + i, (to.perm & bit) !== 0);
    if ((to.unshared & bit) !== (from.unshared & bit)) {
      setLock(fd, SHARED_BASE + i, (to.unshared & bit) !== 0);
    }
  }
}

/** The lock bytes for holding `perm` and sharing `shared`. */
export function lockBits(perm: number, shared: number): LockBits {
  const all = (1 << PERM_BITS) - 1;
  return { perm: perm & all, unshared: ~shared & all };
}

/** No lock bytes. */
export const NO_LOCKS: LockBits = { perm: 0, unshared: 0 };
