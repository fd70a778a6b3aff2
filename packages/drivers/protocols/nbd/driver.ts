/**
 * The `nbd` protocol driver: a node whose data lives in an NBD export. Filenames
 * `nbd://host:port/name` and `nbd+unix:///name?socket=PATH`; options `server.type`,
 * `server.host`, `server.port`, `server.path`, `export`, `reconnect-delay`, `tls-creds`,
 * `tls-hostname` and `x-dirty-bitmap` (block status from another metadata context, read as
 * `base:allocation`: a dirty bitmap's dirty ranges show as holes), as QEMU's. `tls-creds=ID` names a `tls-creds-x509` object with a client
 * endpoint among the graph's user-creatable objects (`--object`, `object-add`), as QEMU's
 * does; see `tls_objects.ts` for the lookup and its messages. Our shortcut `tls-creds-dir`
 * names the directory of the client's x509 credentials without an object (its `dir`, with
 * `verify-peer=on`); given, it is used and `tls-creds` only names them.
 *
 * @module
 */

import {
  type BlockDriver,
  BlockError,
  type BlockLimits,
  type BlockStatus,
  BlockStatusFlags,
  type CreateContext,
  type DriverInstance,
  type DriverRegistry,
  Graph,
  type IoVector,
  type Node,
  type OpenContext,
  type OptionValues,
  type PreallocMode,
  ReqFlags,
  strerror,
} from "@blockgraph/core";
import { NbdClient } from "./client.ts";
import { Cmd, CmdFlags, StateFlags, TransmissionFlags } from "./constants.ts";
import { nbdFilename, parseNbdFilename } from "./filename.ts";
import { loadX509Creds, type X509Creds } from "./tls.ts";
import { findX509Creds } from "./tls_objects.ts";

/** QEMU's INT_MAX: it splits discards and block status requests at this, aligned down. */
const INT_MAX = 2 ** 31 - 1;

/** An open `nbd` node: a client connection to one export. */
export class NbdInstance implements DriverInstance {
  /** Alignment and transfer size from the server's block size information. */
  readonly limits: Partial<BlockLimits>;
  /** FUA when the server takes it. */
  readonly supportedWriteFlags: number;
  /**
   * FUA when the server takes it; MAY_UNMAP (decides NBD_CMD_FLAG_NO_HOLE); NO_FALLBACK
   * (NBD_CMD_FLAG_FAST_ZERO, refused when the server has none).
   */
  readonly supportedZeroFlags: number;
  /** The connection. */
  readonly client: NbdClient;
  /** NBD_CMD_FLUSH hands the writes to the server: sent under cache.no-flush too, as QEMU's. */
  readonly flushesToOs = true;
  readonly #node: Node;
  /** The longest block status or discard asked for: INT_MAX, in whole alignment units. */
  readonly #maxStatus: number;

  /** Wraps a connected client for `node`. */
  constructor(node: Node, client: NbdClient) {
    this.#node = node;
    this.client = client;
    const info = client.info;
    // As QEMU's: without block sizes from the server, requests are byte-granular when the
    // size is not whole sectors or block status is on (its extents need not be aligned),
    // and whole sectors otherwise (an old server, safer so).
    const align = info.blockSizeGiven
      ? info.minBlock
      : info.size % 512 !== 0 || info.baseAllocationId !== null
      ? 1
      : 512;
    const max = Math.floor(info.maxBlock / align) * align;
    this.#maxStatus = Math.floor(INT_MAX / align) * align;
    this.limits = {
      requestAlignment: align,
      maxTransfer: max,
      optTransfer: info.preferredBlock,
      // Write zeroes is split as writes are; discards at INT_MAX (QEMU 7.2's limits).
      maxPwriteZeroes: max,
      maxPdiscard: this.#maxStatus,
    };
    const fua = info.flags & TransmissionFlags.SEND_FUA ? ReqFlags.FUA : 0;
    this.supportedWriteFlags = fua;
    // NO_FALLBACK is taken in every case: it becomes NBD_CMD_FLAG_FAST_ZERO, or ENOTSUP
    // without a request when the server has no fast zeroes (QEMU refuses so too).
    this.supportedZeroFlags = fua | ReqFlags.MAY_UNMAP | ReqFlags.NO_FALLBACK;
  }

  #has(flag: number): boolean {
    return (this.client.info.flags & flag) !== 0;
  }

  /**
   * The export's size rounded up to whole sectors, as QEMU's block layer has it (an export
   * of 1000 bytes is 1024); the bytes past the server's size read as zeros.
   */
  getLength(): number {
    return Math.ceil(this.client.info.size / 512) * 512;
  }

  /** NBD_CMD_READ; what lies past the server's size (in the last sector) reads as zeros. */
  async preadv(offset: number, bytes: number, qiov: IoVector, qiovOffset: number): Promise<void> {
    const size = this.client.info.size;
    if (offset + bytes > size) {
      const inside = Math.max(0, size - offset);
      qiov.fill(qiovOffset + inside, bytes - inside, 0);
      if (inside === 0) return;
      bytes = inside;
    }
    await this.client.request(Cmd.READ, 0, offset, bytes, qiov, qiovOffset);
  }

  /** NBD_CMD_WRITE, with NBD_CMD_FLAG_FUA for FUA writes. */
  async pwritev(
    offset: number,
    bytes: number,
    qiov: IoVector,
    qiovOffset: number,
    flags: number,
  ): Promise<void> {
    const f = flags & ReqFlags.FUA ? CmdFlags.FUA : 0;
    await this.client.request(Cmd.WRITE, f, offset, bytes, qiov, qiovOffset);
  }

  /**
   * NBD_CMD_WRITE_ZEROES (NO_HOLE unless MAY_UNMAP, FAST_ZERO for NO_FALLBACK); ENOTSUP when
   * the server has none.
   */
  async pwriteZeroes(offset: number, bytes: number, flags: number): Promise<void> {
    if (!this.#has(TransmissionFlags.SEND_WRITE_ZEROES)) {
      throw new BlockError("ENOTSUP", "The NBD server does not support write zeroes");
    }
    let f = flags & ReqFlags.FUA ? CmdFlags.FUA : 0;
    if (!(flags & ReqFlags.MAY_UNMAP)) f |= CmdFlags.NO_HOLE;
    if (flags & ReqFlags.NO_FALLBACK) {
      if (!this.#has(TransmissionFlags.SEND_FAST_ZERO)) {
        throw new BlockError("ENOTSUP", "The NBD server does not support fast zeroes");
      }
      f |= CmdFlags.FAST_ZERO;
    }
    await this.client.request(Cmd.WRITE_ZEROES, f, offset, bytes, null, 0);
  }

  /** NBD_CMD_TRIM when the server takes it; otherwise nothing (discard is a hint). */
  async pdiscard(offset: number, bytes: number): Promise<void> {
    if (!this.#has(TransmissionFlags.SEND_TRIM)) return;
    await this.client.request(Cmd.TRIM, 0, offset, bytes, null, 0);
  }

  /** NBD_CMD_FLUSH when the server takes it. */
  async flush(): Promise<void> {
    if (!this.#has(TransmissionFlags.SEND_FLUSH)) return;
    await this.client.request(Cmd.FLUSH, 0, 0, 0, null, 0);
  }

  /**
   * `base:allocation` status of the range (one extent, NBD_CMD_FLAG_REQ_ONE): HOLE clears
   * DATA, ZERO sets ZERO. Without the context everything is data.
   */
  async blockStatus(_wantZero: boolean, offset: number, bytes: number): Promise<BlockStatus> {
    const map = { map: offset, file: this.#node };
    if (this.client.info.baseAllocationId === null) {
      return { status: BlockStatusFlags.DATA | BlockStatusFlags.OFFSET_VALID, pnum: bytes, ...map };
    }
    const size = this.client.info.size;
    // The tail of the last sector, past the server's size: zeros, and no offset to map.
    if (offset >= size) return { status: BlockStatusFlags.ZERO, pnum: bytes };
    const len = Math.min(bytes, size - offset, this.#maxStatus);
    const e = await this.client.request(Cmd.BLOCK_STATUS, CmdFlags.REQ_ONE, offset, len, null, 0);
    if (!e || e.length === 0) {
      throw new BlockError("EIO", "The NBD server answered block status with an empty extent");
    }
    let pnum = e.length;
    let flags = e.flags;
    // An extent not a multiple of the server's minimum block (qemu-nbd 3.1 sent such at the
    // end of a file): shortened to whole blocks, or, when shorter than one, taken as one
    // block of data (always safe), as QEMU does.
    const min = this.client.info.blockSizeGiven ? this.client.info.minBlock : 1;
    if (pnum % min !== 0) {
      if (pnum > min) pnum -= pnum % min;
      else {
        pnum = min;
        flags = 0;
      }
    }
    pnum = Math.min(pnum, len);
    const status = (flags & StateFlags.HOLE ? 0 : BlockStatusFlags.DATA) |
      (flags & StateFlags.ZERO ? BlockStatusFlags.ZERO : 0) | BlockStatusFlags.OFFSET_VALID;
    return { status, pnum, ...map };
  }

  /** False: `create` only opens an export, which keeps what it held (QEMU's default). */
  hasZeroInit(): boolean {
    return false;
  }

  /**
   * An export's size is the server's: shrinking is taken as a no-op and growing refused, as
   * QEMU's NBD client does (what `img create` on an export relies on).
   */
  truncate(offset: number, exact: boolean, _prealloc: PreallocMode): Promise<void> {
    const size = this.getLength();
    if (offset !== size && exact) {
      return Promise.reject(new BlockError("ENOTSUP", "Cannot resize NBD nodes"));
    }
    if (offset > size) return Promise.reject(new BlockError("EINVAL", "Cannot grow NBD nodes"));
    return Promise.resolve();
  }

  /** Disconnects (NBD_CMD_DISC). */
  close(): Promise<void> {
    return this.client.close();
  }
}

/**
 * The TCP port `service` names, as getaddrinfo finds it: a number (taken modulo 2^16, as
 * glibc does), or a name in /etc/services; null when there is none.
 */
async function servicePort(service: string): Promise<number | null> {
  if (/^\d+$/.test(service)) return Number(service) % 65536;
  let table = "";
  try {
    table = await Deno.readTextFile("/etc/services");
  } catch {
    return null;
  }
  for (const line of table.split("\n")) {
    const [name, portProto, ...aliases] = (line.split("#")[0] ?? "").trim().split(/\s+/);
    const m = /^(\d+)\/tcp$/.exec(portProto ?? "");
    if (m && (name === service || aliases.includes(service))) return Number(m[1]);
  }
  return null;
}

/** QEMU's message for a socket that would not connect to `where` (a path, `host:port`). */
function connectFailed(e: unknown, where: string): never {
  const be = BlockError.from(e);
  const why = be.code === "EIO" ? be.message.replace(/ \(os error \d+\)$/, "") : strerror(be.code);
  throw new BlockError(be.code, `Failed to connect to '${where}': ${why}`);
}

function dialer(
  options: OptionValues,
): { dial: () => Promise<Deno.Conn>; server: Parameters<typeof nbdFilename>[0] } {
  const type = options["server.type"] as string | undefined;
  if (!Object.keys(options).some((k) => k.startsWith("server."))) {
    throw new BlockError("EINVAL", "NBD server address missing");
  }
  if (type === "unix") {
    const path = options["server.path"];
    if (typeof path !== "string") {
      throw new BlockError("EINVAL", "Parameter 'path' is missing");
    }
    return {
      dial: () => Deno.connect({ transport: "unix", path }).catch((e) => connectFailed(e, path)),
      server: { type: "unix", path },
    };
  }
  // QEMU names the members of its SocketAddress, which `server` is.
  if (type !== "inet") throw new BlockError("EINVAL", "Parameter 'type' is missing");
  const host = options["server.host"];
  if (typeof host !== "string") {
    throw new BlockError("EINVAL", "Parameter 'host' is missing");
  }
  const port = (options["server.port"] as string | undefined) ?? "10809";
  return {
    dial: async () => {
      let c: Deno.TcpConn;
      if (host === "") {
        // getaddrinfo's answer for no host, as QEMU reports it.
        throw new BlockError(
          "EIO",
          `address resolution failed for ${host}:${port}: Name or service not known`,
        );
      }
      const p = await servicePort(port);
      if (p === null) {
        throw new BlockError(
          "EIO",
          `address resolution failed for ${host}:${port}: Servname not supported for ai_socktype`,
        );
      }
      try {
        c = await Deno.connect({ hostname: host, port: p, transport: "tcp" });
      } catch (e) {
        const gai = /^failed to lookup address information: (.*)$/.exec((e as Error).message);
        if (gai) {
          throw new BlockError("EIO", `address resolution failed for ${host}:${port}: ${gai[1]}`);
        }
        return connectFailed(e, `${host}:${port}`);
      }
      c.setNoDelay(true);
      return c;
    },
    server: { type: "inet", host, port },
  };
}

/**
 * The client's TLS settings from the options, or null when TLS is off: the credentials from
 * `tls-creds-dir` when given, else from the object of `graph` that `tls-creds` names.
 */
async function tlsOptions(
  graph: Graph,
  options: OptionValues,
  server: Parameters<typeof nbdFilename>[0],
): Promise<{ creds: X509Creds; hostname: string | null } | null> {
  const id = options["tls-creds"] as string | undefined;
  const dir = options["tls-creds-dir"] as string | undefined;
  const hostname = options["tls-hostname"] as string | undefined;
  let creds: X509Creds;
  if (dir !== undefined) {
    creds = await loadX509Creds({ id: id ?? "tls-creds-dir", endpoint: "client", dir });
  } else if (id !== undefined) {
    creds = await findX509Creds(graph, id, "client");
  } else {
    if (hostname !== undefined) {
      throw new BlockError("EINVAL", "Parameter 'tls-hostname' needs 'tls-creds'");
    }
    return null;
  }
  return { creds, hostname: hostname ?? (server.type === "inet" ? server.host : null) };
}

/**
 * The `nbd` driver.
 *
 * @example
 * ```ts
 * import { nbdDriver } from "@blockgraph/drivers";
 * const o = nbdDriver.parseFilename!("nbd://127.0.0.1:10809/disk");
 * console.assert(o["server.host"] === "127.0.0.1" && o.export === "disk");
 * ```
 */
export const nbdDriver: BlockDriver = {
  name: "nbd",
  kind: "protocol",
  protocolPrefix: "nbd",
  options: {
    "server.type": { type: "enum", description: "address type", values: ["inet", "unix"] },
    "server.host": { type: "string", description: "host name or address (inet)" },
    "server.port": { type: "string", description: "port (inet, default 10809)" },
    "server.path": { type: "string", description: "socket path (unix)" },
    export: { type: "string", description: "name of the NBD export to open", default: "" },
    "reconnect-delay": {
      type: "int",
      description: "seconds to keep reconnecting after the connection is lost",
      default: 0,
    },
    "tls-creds": {
      type: "string",
      description: "id of the TLS credentials to use (a tls-creds-x509 object, endpoint=client)",
    },
    "tls-creds-dir": {
      type: "string",
      description: "directory of the client's x509 credentials (ca-cert.pem, client-cert.pem, " +
        "client-key.pem), instead of an object",
    },
    "tls-hostname": {
      type: "string",
      description: "host name the server's certificate must name (default: server.host)",
    },
    "x-dirty-bitmap": {
      type: "string",
      description: "experimental: expose a dirty bitmap (a metadata context, " +
        "qemu:dirty-bitmap:NAME or qemu:allocation-depth) as block status",
    },
  },
  parseFilename: parseNbdFilename,
  createOptions: {
    filename: { type: "string", description: "The NBD URI of the export", required: true },
    size: { type: "size", description: "Virtual disk size" },
    preallocation: { type: "string", description: "Preallocation mode (allowed values: off)" },
  },
  /**
   * `img create` on an export, as QEMU's create for protocols that cannot create: the export
   * must exist and be at least `size` bytes; its first sector is zeroed (so no format probe
   * finds an old header there).
   */
  async create(options: OptionValues, registry: DriverRegistry, ctx?: CreateContext) {
    const prealloc = options.preallocation as string | undefined;
    if (prealloc !== undefined && prealloc !== "off") {
      throw new BlockError("EINVAL", `Unsupported preallocation mode '${prealloc}'`);
    }
    const filename = options.filename as string;
    const size = (options.size as number | undefined) ?? 0;
    const graph = new Graph({ registry });
    for (const o of ctx?.objects ?? []) graph.objects.add(o);
    try {
      let node: Node;
      try {
        node = await graph.open({ driver: "nbd", ...parseNbdFilename(filename) }, "create");
      } catch (e) {
        const be = BlockError.from(e);
        throw new BlockError(
          be.code,
          "Protocol driver 'nbd' does not support image creation, and opening the image " +
            `failed: ${be.message}`,
          be.hint === undefined ? {} : { hint: be.hint },
        );
      }
      try {
        await node.truncate(size, false, "off");
        const first = Math.min(node.getLength(), 512);
        if (first > 0) {
          try {
            await node.pwriteZeroes(0, first, ReqFlags.MAY_UNMAP);
          } catch (e) {
            const code = BlockError.from(e).code;
            throw new BlockError(
              code,
              `Failed to clear the new image's first sector: ${strerror(code)}`,
            );
          }
        }
      } finally {
        await node.unref("create");
      }
    } finally {
      await graph.closeAll();
    }
  },
  strongOptions: ["path", "host", "port", "export", "tls-creds", "tls-hostname", "server."],
  /** NBD exports have no directories: relative backing file names cannot be resolved. */
  dirname(): string {
    throw new BlockError("EINVAL", "Cannot generate a base directory for NBD nodes");
  },
  async open(ctx: OpenContext, options: OptionValues): Promise<DriverInstance> {
    const { dial, server } = dialer(options);
    const name = options.export as string;
    const delay = options["reconnect-delay"] as number;
    if (delay < 0) {
      throw new BlockError("EINVAL", "Parameter 'reconnect-delay' must not be negative");
    }
    const describe = nbdFilename(server, name);
    const tls = await tlsOptions(ctx.node.graph, options, server);
    const bitmap = options["x-dirty-bitmap"] as string | undefined;
    const client = await NbdClient.connect({
      dial,
      exportName: name,
      reconnectDelay: delay,
      describe,
      tls,
      ...(bitmap === undefined ? {} : { metaContext: bitmap }),
    });
    if (bitmap !== undefined && client.info.baseAllocationId === null) {
      await client.close();
      // QEMU 7.2 means to say "requested x-dirty-bitmap NAME not found" but loses it on the
      // way out, as the read-only refusal below.
      throw new BlockError("EINVAL", "Could not open image: Invalid argument");
    }
    if (client.info.flags & TransmissionFlags.READ_ONLY && !ctx.readOnly) {
      if (!ctx.fallBackToReadOnly()) {
        await client.close();
        // QEMU 7.2 loses its own message ("NBD export is read-only") on the way out, and
        // says what bdrv_open_driver says of a failure without one.
        throw new BlockError("EACCES", "Could not open image: Permission denied");
      }
    }
    ctx.node.filename = describe;
    return new NbdInstance(ctx.node, client);
  },
};
