/**
 * Opening an image the way QEMU's tools do: a filename with an optional format (probed when
 * absent, with QEMU's warning when probing guesses raw for a writable image), a `json:`
 * filename (its options, under `-f`), or a full set of options (`--image-opts`); cache,
 * discard and AIO modes from their command-line names; the result held by an anonymous
 * Backend.
 *
 * @module
 */

import {
  type Backend,
  type BlockDriver,
  BlockError,
  type Graph,
  isJsonFilename,
  mergeJsonFilename,
  type Node,
  type OptionValues,
  Perm,
} from "@blockgraph/core";

/** A cache mode's meaning (QEMU's `bdrv_parse_cache_mode`). */
export interface CacheMode {
  /** Bypass the host page cache (`cache.direct`). */
  readonly direct: boolean;
  /** Ignore flushes (`cache.no-flush`). */
  readonly noFlush: boolean;
  /** The guest-visible write cache is off: every write is FUA. */
  readonly writethrough: boolean;
}

/** qemu-io's default: writethrough, through the host cache. */
export const DEFAULT_CACHE: CacheMode = { direct: false, noFlush: false, writethrough: true };

/** Parses `none|off|directsync|writeback|unsafe|writethrough`; `null` for anything else. */
export function parseCacheMode(mode: string): CacheMode | null {
  switch (mode) {
    case "off":
    case "none":
      return { direct: true, noFlush: false, writethrough: false };
    case "directsync":
      return { direct: true, noFlush: false, writethrough: true };
    case "writeback":
      return { direct: false, noFlush: false, writethrough: false };
    case "unsafe":
      return { direct: false, noFlush: true, writethrough: false };
    case "writethrough":
      return { direct: false, noFlush: false, writethrough: true };
  }
  return null;
}

/** Parses a discard mode (`ignore|off|unmap|on`); `null` for anything else. */
export function parseDiscardMode(mode: string): "ignore" | "unmap" | null {
  if (mode === "ignore" || mode === "off") return "ignore";
  if (mode === "unmap" || mode === "on") return "unmap";
  return null;
}

/** Parses an AIO mode (`threads|native|io_uring`); `null` for anything else. */
export function parseAioMode(mode: string): string | null {
  return mode === "threads" || mode === "native" || mode === "io_uring" ? mode : null;
}

/** What to open and how. */
export interface OpenRequest {
  /**
   * The image filename (`json:{...}` is options), or `null` when `options` say everything
   * (`--image-opts`).
   */
  readonly filename: string | null;
  /** The format (`-f`); probed when absent. */
  readonly format?: string | undefined;
  /** Further options, nested (`file: {filename: ...}`). */
  readonly options?: OptionValues;
  /** Open read-only. */
  readonly readOnly: boolean;
  /** The cache mode. */
  readonly cache: CacheMode;
  /** The discard mode of the top node. */
  readonly discard: "ignore" | "unmap";
  /** The AIO engine for the protocol node, when chosen. */
  readonly aio?: string | undefined;
  /** The `write-behind` window of a `file` protocol node (bytes; absent or 0: none). */
  readonly writeBehind?: number;
  /** Share every permission with other users (needs `readOnly`). */
  readonly forceShare?: boolean;
  /**
   * Share only consistent reads and unchanged writes with other users (QEMU's
   * `BDRV_O_NO_SHARE`): another process that writes the image keeps it from opening.
   */
  readonly noShare?: boolean;
  /** Open without the backing chain (QEMU's `BDRV_O_NO_BACKING`) when the format has one. */
  readonly noBacking?: boolean;
  /** Open for a consistency check (`check-open`, where the format takes it). */
  readonly forCheck?: boolean;
  /**
   * Open for the metadata only, as `qemu-img info` opens images (QEMU's `BDRV_O_NO_IO`): a
   * qcow2 whose data is encrypted then opens.
   */
  readonly noIo?: boolean;
}

/** An opened image. */
export interface OpenedImage {
  /** The Backend holding the image. */
  readonly backend: Backend;
  /** The top node. */
  readonly node: Node;
  /** Whether the format was probed and found to be raw. */
  readonly probedRaw: boolean;
}

/** How many bytes of an image format probes look at. */
export const PROBE_BUFFER_SIZE = 2048;

/** QEMU's warning when probing guessed raw for an image opened read-write. */
export function probedRawWarning(filename: string): string {
  return `WARNING: Image format was not specified for '${filename}' and probing guessed raw.\n` +
    "         Automatically detecting the format is dangerous for raw images, " +
    "write operations on block 0 will be restricted.\n" +
    "         Specify the 'raw' format explicitly to remove the restrictions.\n";
}

/** Chooses the format for `header` from the registry's probes (the highest score wins). */
export function probeFormat(graph: Graph, header: Uint8Array, filename: string): BlockDriver {
  let best: BlockDriver | null = null;
  let bestScore = 0;
  for (const d of graph.registry.all()) {
    if (d.kind !== "format" || !d.probe) continue;
    const score = d.probe(header, filename);
    if (score > bestScore) {
      best = d;
      bestScore = score;
    }
  }
  if (!best) throw new BlockError("EINVAL", "Could not determine image format");
  return best;
}

/** The options of the protocol node `filename` names (`nbd://...`, a path). */
export function protocolOptions(graph: Graph, filename: string): OptionValues {
  const proto = graph.registry.protocolFor(filename);
  return { driver: proto.name, ...(proto.parseFilename?.(filename) ?? { filename }) };
}

function flagOptions(req: OpenRequest): OptionValues {
  const flags: OptionValues = {
    "read-only": req.readOnly,
    cache: { direct: req.cache.direct, "no-flush": req.cache.noFlush },
    discard: req.discard,
  };
  if (req.forceShare) flags["force-share"] = true;
  return flags;
}

function mergeDefaults(target: OptionValues, defaults: OptionValues): OptionValues {
  const out: OptionValues = { ...defaults, ...target };
  for (const [k, v] of Object.entries(defaults)) {
    const t = target[k];
    if (
      typeof v === "object" && v !== null && typeof t === "object" && t !== null &&
      !Array.isArray(t)
    ) {
      out[k] = { ...(v as OptionValues), ...(t as OptionValues) };
    }
  }
  return out;
}

/** What `req` asks of a `file` protocol node, under the options given for it. */
function withFileExtras(req: OpenRequest, opts: OptionValues): OptionValues {
  if (opts.driver !== "file") return opts;
  const extras: OptionValues = {};
  if (req.aio !== undefined) extras.aio = req.aio;
  if (req.writeBehind) extras["write-behind"] = req.writeBehind;
  return { ...extras, ...opts };
}

/** Completes an inline protocol child: its driver from its filename, and `req`'s extras. */
function completeFile(graph: Graph, file: OptionValues, req: OpenRequest): OptionValues {
  let out = { ...file };
  if (out.driver === undefined && typeof out.filename === "string") {
    out = { ...protocolOptions(graph, out.filename), ...out };
    out.driver = graph.registry.protocolFor(file.filename as string).name;
  }
  return withFileExtras(req, out);
}

/**
 * Opens an image and puts it in a new anonymous Backend that takes consistent-read (and
 * write, unless read-only) permission and shares everything. `warn` receives QEMU's probing
 * warning.
 */
export async function openImage(
  graph: Graph,
  req: OpenRequest,
  warn: (text: string) => void,
): Promise<OpenedImage> {
  let given: OptionValues = { ...(req.options ?? {}) };
  if (req.format !== undefined) given.driver = req.format;
  // A json: filename is options, under those given otherwise, and names no file itself.
  let named = req.filename;
  if (named !== null && isJsonFilename(named)) {
    given = mergeJsonFilename(given, named);
    named = null;
  }
  const filename = named ?? (typeof given.filename === "string" ? given.filename : null);
  if (named !== null && given.filename === undefined) given.filename = named;
  let driverName = given.driver as string | undefined;
  const flags = flagOptions(req);
  let probedRaw = false;
  let top: OptionValues;
  let probeNode: Node | null = null;
  if (driverName === undefined) {
    const fileOpt = given.file;
    let protoOpts: OptionValues;
    if (typeof fileOpt === "object" && fileOpt !== null) {
      protoOpts = completeFile(graph, fileOpt as OptionValues, req);
    } else if (named !== null) {
      protoOpts = completeFile(graph, protocolOptions(graph, named), req);
    } else if (typeof fileOpt === "string" && !graph.findNode(fileOpt)) {
      // A string names an existing node, as a child reference does (QEMU's message).
      throw new BlockError("ENOENT", `Cannot find device='${fileOpt}' nor node-name='${fileOpt}'`);
    } else {
      throw new BlockError("EINVAL", "Must specify either driver or file");
    }
    probeNode = await graph.open(
      mergeDefaults(protoOpts, { ...flags, discard: "unmap" }),
      "probe",
    );
    try {
      const len = Math.min(PROBE_BUFFER_SIZE, probeNode.getLength());
      const header = new Uint8Array(len);
      if (len > 0) await probeNode.read(0, header);
      const fmt = probeFormat(graph, header, probeNode.filename);
      driverName = fmt.name;
      probedRaw = fmt.name === "raw";
      if (probedRaw && !req.readOnly) warn(probedRawWarning(probeNode.filename || filename || ""));
    } catch (e) {
      await probeNode.unref("probe");
      throw e;
    }
    const rest = { ...given };
    delete rest.file;
    delete rest.filename;
    top = mergeDefaults({ ...rest, driver: driverName, file: probeNode.name }, flags);
  } else {
    const driver = graph.registry.get(driverName);
    const rest = { ...given };
    if (driver.kind === "protocol") {
      delete rest.filename;
      const parsed = filename !== null && driver.parseFilename
        ? driver.parseFilename(filename)
        : filename !== null
        ? { filename }
        : {};
      top = withFileExtras(req, mergeDefaults({ ...parsed, ...rest }, flags));
    } else {
      delete rest.filename;
      if (typeof rest.file === "object" && rest.file !== null) {
        rest.file = completeFile(graph, rest.file as OptionValues, req);
      } else if (rest.file === undefined && filename !== null) {
        rest.file = completeFile(graph, protocolOptions(graph, filename), req);
      }
      top = mergeDefaults(rest, flags);
    }
  }
  if (req.noBacking && graph.registry.find(String(top.driver))?.supportsBacking) {
    top.backing = null;
  }
  if (req.forCheck && graph.registry.find(String(top.driver))?.options["check-open"]) {
    top["check-open"] = true;
  }
  let node: Node;
  try {
    node = await graph.open(top, "open", { noIo: req.noIo ?? false });
  } finally {
    if (probeNode) await probeNode.unref("probe");
  }
  const backend = graph.createBackend({
    perm: Perm.CONSISTENT_READ | (req.readOnly ? 0 : Perm.WRITE),
    shared: req.noShare ? Perm.CONSISTENT_READ | Perm.WRITE_UNCHANGED : Perm.ALL,
  });
  try {
    await backend.insertRoot(node);
  } catch (e) {
    await node.unref("open");
    await backend.unref();
    throw e;
  } finally {
    if (backend.node === node) await node.unref("open");
  }
  backend.enableWriteCache = !req.cache.writethrough;
  return { backend, node, probedRaw };
}
