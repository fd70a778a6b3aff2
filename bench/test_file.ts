/**
 * The raw test file the file cases share: written in full with non-zero data (never
 * fallocated: unwritten extents read back zeros without touching the device, which would
 * flatter every reader), synced, created once per run and deleted at its end.
 *
 * @module
 */

const CHUNK = 1 << 20;

/** A test file: its path, size, and how to delete it with its directory. */
export interface TestFile {
  /** The file's path. */
  readonly path: string;
  /** Its size in bytes. */
  readonly size: number;
  /** Deletes the file and the temporary directory holding it. */
  remove(): Promise<void>;
}

/**
 * Creates a file of `size` bytes (a multiple of 1 MiB) in a new temporary directory under
 * `parent` (default: the system's), every byte written, and fsyncs it.
 */
export async function createTestFile(size: number, parent?: string): Promise<TestFile> {
  if (size <= 0 || size % CHUNK !== 0) {
    throw new RangeError(`Test file size must be a positive multiple of 1 MiB, not ${size}`);
  }
  const dir = await Deno.makeTempDir({
    prefix: "blockgraph-bench-",
    ...(parent ? { dir: parent } : {}),
  });
  const path = `${dir}/disk.raw`;
  const chunk = new Uint8Array(CHUNK);
  const words = new Uint32Array(chunk.buffer);
  let x = 0x9e3779b9;
  const file = await Deno.open(path, { write: true, create: true, truncate: true });
  try {
    for (let written = 0; written < size; written += CHUNK) {
      // A cheap xorshift stream: no two chunks alike, nothing the device could compress away.
      for (let i = 0; i < words.length; i++) {
        x ^= x << 13;
        x ^= x >>> 17;
        x ^= x << 5;
        words[i] = x >>> 0;
      }
      for (let off = 0; off < CHUNK;) off += await file.write(chunk.subarray(off));
    }
    await file.sync();
  } catch (e) {
    file.close();
    await Deno.remove(dir, { recursive: true });
    throw e;
  }
  file.close();
  return { path, size, remove: () => Deno.remove(dir, { recursive: true }) };
}

/** Reads the whole file once through the page cache, so buffered cases start from a warm cache. */
export async function warmPageCache(path: string): Promise<void> {
  const file = await Deno.open(path, { read: true });
  try {
    const buf = new Uint8Array(CHUNK);
    while ((await file.read(buf)) !== null) { /* reading is the point */ }
  } finally {
    file.close();
  }
}

/**
 * Writes `path`'s dirty pages back and drops it from the page cache (GNU dd's `oflag=nocache`
 * with `count=0`, which is fdatasync and `POSIX_FADV_DONTNEED` over the whole file), so that
 * every run writes into the same state: an empty cache. Left warm, the cache holds the large
 * folios that readahead of the read cases made, and then every 4 KiB buffered write walks a
 * whole folio's buffer heads in ext4 (`ext4_block_write_begin` was 37% of the samples of
 * both servers in NBD 4k randwrite), a cost that drifts as writeback splits them, with peer
 * runs of the same case between 29k and 50k IOPS.
 */
export async function dropFromCache(path: string): Promise<void> {
  const r = await new Deno.Command("dd", {
    args: ["if=/dev/null", `of=${path}`, "oflag=nocache", "conv=notrunc,fdatasync", "count=0"],
    stdout: "null",
    stderr: "piped",
  }).output();
  if (!r.success) {
    throw new Error(`dd (dropping ${path} from the cache): ${new TextDecoder().decode(r.stderr)}`);
  }
}
