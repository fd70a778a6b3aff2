/**
 * The numbers of the NBD protocol (doc/proto.md of the NetworkBlockDevice project): magics,
 * handshake and transmission flags, option and reply codes, commands, structured reply chunk
 * types and the protocol's error values. Shared by the server and the client.
 *
 * @module
 */

/** `NBDMAGIC`, the first eight bytes a server sends. */
export const NBD_MAGIC = 0x4e42444d41474943n;
/** `IHAVEOPT`: the newstyle magic, also the prefix of every option request. */
export const NBD_OPTS_MAGIC = 0x49484156454f5054n;
/** The magic of option replies. */
export const NBD_REP_MAGIC = 0x0003e889045565a9n;
/** The magic of transmission requests. */
export const NBD_REQUEST_MAGIC = 0x25609513;
/** The magic of simple replies. */
export const NBD_SIMPLE_REPLY_MAGIC = 0x67446698;
/** The magic of structured reply chunks. */
export const NBD_STRUCTURED_REPLY_MAGIC = 0x668e33ef;

/** Handshake flags the server sends after `IHAVEOPT`. */
export const HandshakeFlags = {
  /** The server speaks fixed newstyle. */
  FIXED_NEWSTYLE: 1 << 0,
  /** The server can leave out the 124 zero bytes after `NBD_OPT_EXPORT_NAME`. */
  NO_ZEROES: 1 << 1,
} as const;

/** Client flags, the answer to the handshake flags. */
export const ClientFlags = {
  /** The client speaks fixed newstyle. */
  FIXED_NEWSTYLE: 1 << 0,
  /** The client does not want the 124 zero bytes. */
  NO_ZEROES: 1 << 1,
} as const;

/** Transmission flags: what an export can do, sent with its size. */
export const TransmissionFlags = {
  /** Always set: the other bits mean something. */
  HAS_FLAGS: 1 << 0,
  /** The export is read-only. */
  READ_ONLY: 1 << 1,
  /** The server takes NBD_CMD_FLUSH. */
  SEND_FLUSH: 1 << 2,
  /** The server takes NBD_CMD_FLAG_FUA. */
  SEND_FUA: 1 << 3,
  /** The export is on rotational media. */
  ROTATIONAL: 1 << 4,
  /** The server takes NBD_CMD_TRIM. */
  SEND_TRIM: 1 << 5,
  /** The server takes NBD_CMD_WRITE_ZEROES. */
  SEND_WRITE_ZEROES: 1 << 6,
  /** The server takes NBD_CMD_FLAG_DF on reads. */
  SEND_DF: 1 << 7,
  /** Several connections to this export see one another's writes and flushes. */
  CAN_MULTI_CONN: 1 << 8,
  /** The server takes NBD_CMD_RESIZE. */
  SEND_RESIZE: 1 << 9,
  /** The server takes NBD_CMD_CACHE. */
  SEND_CACHE: 1 << 10,
  /** The server takes NBD_CMD_FLAG_FAST_ZERO. */
  SEND_FAST_ZERO: 1 << 11,
} as const;

/** Option codes of the handshake. */
export const Opt = {
  EXPORT_NAME: 1,
  ABORT: 2,
  LIST: 3,
  PEEK_EXPORT: 4,
  STARTTLS: 5,
  INFO: 6,
  GO: 7,
  STRUCTURED_REPLY: 8,
  LIST_META_CONTEXT: 9,
  SET_META_CONTEXT: 10,
  EXTENDED_HEADERS: 11,
} as const;

/** QEMU's names of the options (`nbd_opt_lookup`), as its messages give them. */
const OPTION_NAMES: Readonly<Record<number, string>> = {
  [Opt.EXPORT_NAME]: "export name",
  [Opt.ABORT]: "abort",
  [Opt.LIST]: "list",
  [Opt.PEEK_EXPORT]: "peek export",
  [Opt.STARTTLS]: "starttls",
  [Opt.INFO]: "info",
  [Opt.GO]: "go",
  [Opt.STRUCTURED_REPLY]: "structured reply",
  [Opt.LIST_META_CONTEXT]: "list meta context",
  [Opt.SET_META_CONTEXT]: "set meta context",
};

/** QEMU's name of option `option` (`<unknown>` for one it does not know). */
export function optionName(option: number): string {
  return OPTION_NAMES[option] ?? "<unknown>";
}

/** Bit 31 marks an option reply as an error. */
export const REP_ERR = 0x80000000;

/** Option reply types. */
export const Rep = {
  ACK: 1,
  SERVER: 2,
  INFO: 3,
  META_CONTEXT: 4,
  ERR_UNSUP: REP_ERR + 1,
  ERR_POLICY: REP_ERR + 2,
  ERR_INVALID: REP_ERR + 3,
  ERR_PLATFORM: REP_ERR + 4,
  ERR_TLS_REQD: REP_ERR + 5,
  ERR_UNKNOWN: REP_ERR + 6,
  ERR_SHUTDOWN: REP_ERR + 7,
  ERR_BLOCK_SIZE_REQD: REP_ERR + 8,
  ERR_TOO_BIG: REP_ERR + 9,
} as const;

/** Information types of NBD_REP_INFO (and requests of NBD_OPT_INFO/GO). */
export const Info = {
  EXPORT: 0,
  NAME: 1,
  DESCRIPTION: 2,
  BLOCK_SIZE: 3,
} as const;

/** Transmission commands. */
export const Cmd = {
  READ: 0,
  WRITE: 1,
  DISC: 2,
  FLUSH: 3,
  TRIM: 4,
  CACHE: 5,
  WRITE_ZEROES: 6,
  BLOCK_STATUS: 7,
  RESIZE: 8,
} as const;

/** Command flags. */
export const CmdFlags = {
  FUA: 1 << 0,
  NO_HOLE: 1 << 1,
  DF: 1 << 2,
  REQ_ONE: 1 << 3,
  FAST_ZERO: 1 << 4,
} as const;

/** Structured reply flags. */
export const REPLY_FLAG_DONE = 1;

/** Structured reply chunk types. */
export const ReplyType = {
  NONE: 0,
  OFFSET_DATA: 1,
  OFFSET_HOLE: 2,
  BLOCK_STATUS: 5,
  ERROR: (1 << 15) + 1,
  ERROR_OFFSET: (1 << 15) + 2,
} as const;

/** Bit 15 marks a structured reply chunk as an error chunk. */
export const REPLY_TYPE_ERROR_BIT = 1 << 15;

/** Flags of the `base:allocation` metadata context. */
export const StateFlags = {
  /** The range is not allocated (reads may still return data: check ZERO). */
  HOLE: 1 << 0,
  /** The range reads as zeros. */
  ZERO: 1 << 1,
} as const;

/** The `base:allocation` metadata context name. */
export const META_BASE_ALLOCATION = "base:allocation";
/** QEMU's allocation depth context: 0 unallocated, 1 the top layer, N the N-th layer. */
export const META_QEMU_ALLOCATION_DEPTH = "qemu:allocation-depth";
/** QEMU's dirty bitmap contexts, `qemu:dirty-bitmap:NAME`. */
export const META_QEMU_DIRTY_BITMAP_PREFIX = "qemu:dirty-bitmap:";

/** The size of a request header. */
export const REQUEST_SIZE = 28;
/** The size of a simple reply header. */
export const SIMPLE_REPLY_SIZE = 16;
/** The size of a structured reply chunk header. */
export const STRUCTURED_REPLY_SIZE = 20;
/** The size of an option reply header. */
export const OPTION_REPLY_SIZE = 20;
/** The size of an option request header. */
export const OPTION_REQUEST_SIZE = 16;

/** The largest READ or WRITE payload either side accepts (QEMU's limit, 32 MiB). */
export const NBD_MAX_BUFFER_SIZE = 32 * 1024 * 1024;
/** The longest string (export name, description, context name) the protocol allows. */
export const NBD_MAX_STRING_SIZE = 4096;
/** The largest option payload the server reads; longer options end the connection. */
export const NBD_MAX_OPTION_SIZE = 1024 * 1024;
/** The IANA port of NBD. */
export const NBD_DEFAULT_PORT = 10809;
