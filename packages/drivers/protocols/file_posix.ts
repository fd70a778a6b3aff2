/**
 * Host-file helpers of the `file` protocol that are not I/O engine requests: the O_DIRECT
 * alignment probe, block status from `lseek(SEEK_DATA/SEEK_HOLE)`, and resizing with
 * preallocation.
 *
 * @module
 */

import {
  BlockError,
  type BlockStatus,
  BlockStatusFlags,
  errnoCode,
  type ErrorCode,
  type Node,
  type PreallocMode,
  strerror,
} from "@blockgraph/core";
import { BufferPool } from "../io/buffer_pool.ts";
import type { IoEngine } from "../io/engine.ts";
import { lastErrno, libc, SEEK, viewAddress } from "../io/libc.ts";
import type { HostFiles } from "../io/posix_file.ts";
import { IoVector } from "@blockgraph/core";

const ENXIO = 6;
const EINVAL = 22;
/** The size of the zero buffer preallocation writes from. */
const ZERO_BUFFER_SIZE = 1024 * 1024;

/** A BlockError in QEMU's `what: strerror` shape, keeping the system error as its cause. */
export function sysError(err: unknown, what: string, offset?: number): BlockError {
  if (err instanceof BlockError && err.cause === undefined && err.offset === undefined) {
    return err;
  }
  const e = BlockError.from(err);
  const at = offset ?? e.offset;
  return new BlockError(
    e.code,
    `${what}: ${strerror(e.code)}`,
    at === undefined ? { cause: err } : { cause: err, offset: at },
  );
}

/**
 * The logical block size O_DIRECT needs on `fd`: 512 when an aligned 512-byte read at offset
 * 0 works, else 4096 (QEMU's probe, shortened to the two sizes that exist).
 */
export function probeDirectAlignment(fd: number): number {
  const pool = new BufferPool(4096);
  try {
    const buf = pool.get(4096);
    const n = libc().pread(fd, buf.ptr, 512n, 0n);
    if (n >= 0n) return 512;
    return lastErrno() === EINVAL ? 4096 : 512;
  } catch {
    return 4096;
  } finally {
    pool.destroy();
  }
}

function seek(fd: number, offset: number, whence: number): number {
  const r = Number(libc().lseek(fd, BigInt(offset), whence));
  return r < 0 ? -lastErrno() : r;
}

/**
 * Block status of `[offset, offset+bytes)` of a host file, as QEMU's file-posix answers it:
 * holes read as zeros (ZERO), everything else is DATA; both with the offset valid in `node`.
 */
export function fileBlockStatus(
  node: Node,
  fd: number,
  wantZero: boolean,
  offset: number,
  bytes: number,
): BlockStatus {
  const data = BlockStatusFlags.DATA | BlockStatusFlags.OFFSET_VALID;
  const zero = BlockStatusFlags.ZERO | BlockStatusFlags.OFFSET_VALID;
  if (!wantZero) return { status: data, pnum: bytes, map: offset, file: node };
  let d: number;
  try {
    d = seek(fd, offset, SEEK.DATA);
  } catch {
    return { status: data, pnum: bytes, map: offset, file: node };
  }
  if (d === -ENXIO) return { status: zero, pnum: bytes, map: offset, file: node };
  if (d < 0) return { status: data, pnum: bytes, map: offset, file: node };
  if (d > offset) {
    return { status: zero, pnum: Math.min(bytes, d - offset), map: offset, file: node };
  }
  const h = seek(fd, offset, SEEK.HOLE);
  const pnum = h > offset ? Math.min(bytes, h - offset) : bytes;
  return { status: data, pnum, map: offset, file: node };
}

/** `FS_IOC_GETFLAGS` and `FS_IOC_SETFLAGS` (x86-64 and arm64 encode them alike). */
const FS_IOC_GETFLAGS = 0x80086601n;
const FS_IOC_SETFLAGS = 0x40086602n;
/** The inode flag that turns copy-on-write off (btrfs). */
const FS_NOCOW_FL = 0x00800000;
/** `FS_IOC_FSGETXATTR` and `FS_IOC_FSSETXATTR`, on a 28-byte `struct fsxattr`. */
const FS_IOC_FSGETXATTR = 0x801c581fn;
const FS_IOC_FSSETXATTR = 0x401c5820n;
/** `fsx_xflags`: the extent size hint in `fsx_extsize` applies. */
const FS_XFLAG_EXTSIZE = 0x800;

/**
 * Sets the NOCOW attribute of `fd` (QEMU's `nocow` create option): copy-on-write file
 * systems (btrfs) then write the file in place. Failures are ignored, as QEMU ignores them:
 * most file systems have no such attribute, and it is only an optimisation.
 */
export function setNocow(fd: number): void {
  try {
    const attr = new Int32Array(2);
    const buf = new Uint8Array(attr.buffer);
    if (libc().ioctl(fd, FS_IOC_GETFLAGS, buf) !== 0) return;
    attr[0]! |= FS_NOCOW_FL;
    libc().ioctl(fd, FS_IOC_SETFLAGS, buf);
  } catch {
    // No FFI here: the file keeps copy-on-write.
  }
}

/**
 * Sets the extent size hint of `fd` to `bytes` (XFS's `fsx_extsize`, with the EXTSIZE flag)
 * as QEMU's file-posix create does: read the attributes, then write them back with the
 * hint. Returns `null` on success, else the error code of the call that failed.
 */
export function setExtentSizeHint(fd: number, bytes: number): ErrorCode | null {
  let lib;
  try {
    lib = libc();
  } catch {
    return "ENOTSUP";
  }
  const attr = new Uint32Array(7);
  const buf = new Uint8Array(attr.buffer);
  if (lib.ioctl(fd, FS_IOC_FSGETXATTR, buf) !== 0) return errnoCode(lastErrno());
  attr[0]! |= FS_XFLAG_EXTSIZE;
  attr[1] = bytes;
  if (lib.ioctl(fd, FS_IOC_FSSETXATTR, buf) !== 0) return errnoCode(lastErrno());
  return null;
}

/**
 * The extent size hint of the file at `path` (`fsx_extsize` when the EXTSIZE flag is set,
 * else 0), or `null` when it cannot be read (no such attributes on its file system, no FFI).
 */
export function extentSizeHintOf(path: string): number | null {
  const attr = new Uint32Array(7);
  let fd = -1;
  try {
    fd = libc().open(new TextEncoder().encode(`${path}\0`), 0, 0);
    if (fd < 0) return null;
    if (libc().ioctl(fd, FS_IOC_FSGETXATTR, new Uint8Array(attr.buffer)) !== 0) return null;
  } catch {
    return null;
  } finally {
    if (fd >= 0) libc().close(fd);
  }
  return attr[0]! & FS_XFLAG_EXTSIZE ? attr[1]! : 0;
}

let zeroBuffer: Uint8Array | null = null;

/** Writes zeros over `[from, to)` of `fd` through `engine`, a megabyte at a time. */
async function writeZeros(engine: IoEngine, fd: number, from: number, to: number): Promise<void> {
  const zeros = zeroBuffer ??= new Uint8Array(ZERO_BUFFER_SIZE);
  const qiov = IoVector.of(zeros);
  for (let pos = from; pos < to;) {
    const want = Math.min(to - pos, ZERO_BUFFER_SIZE);
    const n = await engine.pwritev(fd, pos, qiov, 0, want, false);
    if (n <= 0) throw new BlockError("EIO", "Could not write zeros for preallocation");
    pos += n;
  }
}

/**
 * Writes zeros over the first block of a file just grown from empty to `size` bytes (512
 * bytes when it is smaller than 4 KiB, else 4 KiB), as QEMU's `allocate_first_block`: a
 * file's first block is then allocated, so an O_DIRECT alignment probe of it reads real
 * data, and `qemu-img map` shows the block as data as it does for qemu-img's raw images.
 * Failures are ignored, as QEMU ignores them (it only helps later probes).
 */
function allocateFirstBlock(fd: number, size: number): void {
  try {
    const n = size < 4096 ? 512 : 4096;
    const zeros = new Uint8Array(n);
    const iov = new Uint8Array(16);
    const v = new DataView(iov.buffer);
    v.setBigUint64(0, BigInt(viewAddress(zeros)), true);
    v.setBigUint64(8, BigInt(n), true);
    libc().pwritev(fd, iov, 1, 0n);
  } catch {
    // No FFI here: the block stays a hole.
  }
}

/**
 * Resizes the open file `fd` (opened through `files`) from `current` to `size` bytes,
 * filling the grown part as `prealloc` says: `falloc` with `posix_fallocate` (run on a pool
 * thread; it returns its error), `full` by writing zeros through `engine` (which `fd` must
 * suit; only `full` needs one). Shared by truncate and create.
 */
export async function resizeFile(
  files: HostFiles,
  engine: IoEngine | null,
  fd: number,
  current: number,
  size: number,
  prealloc: PreallocMode,
): Promise<void> {
  if (prealloc !== "off" && size < current) {
    throw new BlockError("ENOTSUP", "Cannot use preallocation for shrinking files");
  }
  if (prealloc !== "off" && prealloc !== "falloc" && prealloc !== "full") {
    throw new BlockError("ENOTSUP", `Unsupported preallocation mode: ${prealloc}`);
  }
  try {
    await files.ftruncate(fd, size);
  } catch (e) {
    throw sysError(e, "Could not resize file");
  }
  if (prealloc === "off") {
    if (current === 0 && size > 0) allocateFirstBlock(fd, size);
    return;
  }
  if (size === current) return;
  try {
    if (prealloc === "falloc") {
      const rc = await libc().posix_fallocate(fd, BigInt(current), BigInt(size - current));
      if (rc !== 0) {
        const code = errnoCode(rc);
        throw new BlockError(code, `Could not preallocate new data: ${strerror(code)}`);
      }
    } else {
      if (!engine) throw new BlockError("EINVAL", "Preallocation mode full needs an I/O engine");
      await writeZeros(engine, fd, current, size);
      await engine.fsync(fd, true);
    }
  } catch (e) {
    // Leave the file as it was, as QEMU does when preallocation fails.
    await files.ftruncate(fd, current).catch(() => {});
    if (e instanceof BlockError && e.message.startsWith("Could not")) throw e;
    throw sysError(e, "Could not write zeros for preallocation");
  }
}
