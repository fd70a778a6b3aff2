/**
 * The client's side of the fixed newstyle handshake: structured replies, the
 * `base:allocation` metadata context, and NBD_OPT_GO with block size information, falling
 * back to NBD_OPT_EXPORT_NAME for servers that know no GO.
 *
 * @module
 */

import { BlockError, type ErrorCode } from "@blockgraph/core";
import {
  decodeGreeting,
  decodeMetaContextReply,
  decodeOptionReplyHeader,
  encodeInfoRequest,
  encodeMetaContextRequest,
  encodeOption,
  fromUtf8,
  getU64,
  OPTION_REPLY_SIZE,
  viewOf,
} from "./codec.ts";
import {
  ClientFlags,
  HandshakeFlags,
  Info,
  META_BASE_ALLOCATION,
  NBD_MAX_BUFFER_SIZE,
  Opt,
  optionName,
  Rep,
  REP_ERR,
} from "./constants.ts";
import type { WireReader, WireWriter } from "./wire_io.ts";

/** What the client learned about the export. */
export interface ExportInfo {
  /** The size in bytes. */
  size: number;
  /** The transmission flags. */
  flags: number;
  /** Whether structured replies are on. */
  structured: boolean;
  /**
   * The id of the block status context asked for (`base:allocation`, or the one of
   * `x-dirty-bitmap`), or null when the server offers none.
   */
  baseAllocationId: number | null;
  /** The minimum block size (request alignment); 1 when the server gave none. */
  minBlock: number;
  /** Whether the server sent NBD_INFO_BLOCK_SIZE (else the sizes here are defaults). */
  blockSizeGiven: boolean;
  /** The preferred block size (0: the server gave none). */
  preferredBlock: number;
  /** The largest request payload. */
  maxBlock: number;
}

const MAX_REPLY = 64 * 1024;

async function readReply(
  reader: WireReader,
  option: number,
): Promise<{ type: number; data: Uint8Array }> {
  const head = await reader.readBytes(OPTION_REPLY_SIZE);
  const h = decodeOptionReplyHeader(head);
  if (h.option !== option) {
    throw new BlockError("EIO", `The NBD server answered option ${h.option} to option ${option}`);
  }
  if (h.length > MAX_REPLY) throw new BlockError("EIO", "The NBD server sent an oversized reply");
  return { type: h.type, data: await reader.readBytes(h.length) };
}

/**
 * The error an option's error reply means, in QEMU's words: the reply type says what went
 * wrong, and the server's own text follows as a hint (`server reported: ...`).
 */
function replyError(option: number, type: number, data: Uint8Array): BlockError {
  let text = "";
  try {
    text = fromUtf8(data);
  } catch {
    text = "";
  }
  const opt = `option ${option} (${optionName(option)})`;
  let code: ErrorCode = "EIO";
  let message: string;
  let hint = "";
  switch (type) {
    case Rep.ERR_POLICY:
      code = "EACCES";
      message = `Denied by server for ${opt}`;
      break;
    case Rep.ERR_INVALID:
      code = "EINVAL";
      message = `Invalid parameters for ${opt}`;
      break;
    case Rep.ERR_PLATFORM:
      code = "ENOTSUP";
      message = `Server lacks support for ${opt}`;
      break;
    case Rep.ERR_TLS_REQD:
      code = "EACCES";
      message = `TLS negotiation required before ${opt}`;
      hint = "Did you forget a valid tls-creds?\n";
      break;
    case Rep.ERR_UNKNOWN:
      code = "ENOENT";
      message = "Requested export not available";
      break;
    case Rep.ERR_SHUTDOWN:
      code = "ESHUTDOWN";
      message = `Server shutting down before ${opt}`;
      break;
    case Rep.ERR_BLOCK_SIZE_REQD:
      message = `Server requires INFO_BLOCK_SIZE for ${opt}`;
      break;
    default:
      message = `Unknown error code when asking for ${opt}`;
  }
  if (text !== "") hint += `server reported: ${text}\n`;
  return new BlockError(code, message, hint === "" ? {} : { hint });
}

/** TLS for the client's handshake: how to switch the socket over after STARTTLS. */
export interface ClientHandshakeTls {
  /** Runs the TLS handshake once the server acknowledged NBD_OPT_STARTTLS. */
  upgrade(): Promise<void>;
}

/**
 * Runs the handshake for export `name`; throws a BlockError the user can act on. With `tls`
 * the connection is upgraded first (NBD_OPT_STARTTLS), and a server that cannot is refused.
 * Block status comes from the one metadata `context` (QEMU's x-dirty-bitmap asks for another
 * than `base:allocation`, read as if it were).
 */
export async function clientHandshake(
  reader: WireReader,
  writer: WireWriter,
  name: string,
  tls: ClientHandshakeTls | null = null,
  context: string = META_BASE_ALLOCATION,
): Promise<ExportInfo> {
  const serverFlags = decodeGreeting(await reader.readBytes(18));
  const fixed = (serverFlags & HandshakeFlags.FIXED_NEWSTYLE) !== 0;
  const noZeroes = (serverFlags & HandshakeFlags.NO_ZEROES) !== 0;
  const clientFlags = new Uint8Array(4);
  viewOf(clientFlags).setUint32(
    0,
    (fixed ? ClientFlags.FIXED_NEWSTYLE : 0) | (noZeroes ? ClientFlags.NO_ZEROES : 0),
  );
  writer.copy(clientFlags);
  if (tls) {
    if (!fixed) throw new BlockError("ENOTSUP", "The NBD server does not support STARTTLS");
    writer.copy(encodeOption(Opt.STARTTLS));
    const r = await readReply(reader, Opt.STARTTLS);
    if (r.type === Rep.ERR_UNSUP) {
      throw new BlockError("ENOTSUP", "Server don't support STARTTLS option");
    }
    if (r.type & REP_ERR) throw replyError(Opt.STARTTLS, r.type, r.data);
    if (r.type !== Rep.ACK) {
      throw new BlockError(
        "EIO",
        `Server answered option 5 (starttls) with unexpected reply ${r.type}`,
      );
    }
    await writer.idle();
    await tls.upgrade();
  }
  const info: ExportInfo = {
    size: 0,
    flags: 0,
    structured: false,
    baseAllocationId: null,
    minBlock: 1,
    blockSizeGiven: false,
    preferredBlock: 0,
    maxBlock: NBD_MAX_BUFFER_SIZE,
  };
  if (fixed) {
    writer.copy(encodeOption(Opt.STRUCTURED_REPLY));
    const sr = await readReply(reader, Opt.STRUCTURED_REPLY);
    info.structured = sr.type === Rep.ACK;
    if (info.structured) {
      writer.copy(
        encodeOption(Opt.SET_META_CONTEXT, encodeMetaContextRequest(name, [context])),
      );
      for (;;) {
        const r = await readReply(reader, Opt.SET_META_CONTEXT);
        if (r.type === Rep.META_CONTEXT) {
          const c = decodeMetaContextReply(r.data);
          if (c.name !== context) {
            throw new BlockError(
              "EIO",
              `Failed to negotiate meta context '${context}', server answered with different ` +
                `context '${c.name}'`,
            );
          }
          if (info.baseAllocationId !== null) {
            throw new BlockError("EIO", "Server answered with more than one context");
          }
          info.baseAllocationId = c.id;
          continue;
        }
        // Errors here are not fatal (QEMU ignores them too): NBD_OPT_GO says what is wrong.
        break;
      }
    }
    writer.copy(encodeOption(Opt.GO, encodeInfoRequest(name, [Info.BLOCK_SIZE])));
    for (;;) {
      const r = await readReply(reader, Opt.GO);
      if (r.type === Rep.INFO && r.data.length >= 2) {
        const v = viewOf(r.data);
        const type = v.getUint16(0);
        if (type === Info.EXPORT && r.data.length >= 12) {
          info.size = exportSize(v, 2);
          info.flags = v.getUint16(10);
        } else if (type === Info.BLOCK_SIZE && r.data.length >= 14) {
          info.blockSizeGiven = true;
          info.minBlock = v.getUint32(2);
          info.preferredBlock = v.getUint32(6);
          info.maxBlock = v.getUint32(10);
        }
        continue;
      }
      if (r.type === Rep.ACK) return checked(info);
      if (r.type === Rep.ERR_UNSUP) break;
      if (r.type & REP_ERR) throw replyError(Opt.GO, r.type, r.data);
    }
  }
  // Servers without NBD_OPT_GO: the old way, which ends the connection on an unknown name.
  writer.copy(encodeOption(Opt.EXPORT_NAME, new TextEncoder().encode(name)));
  let reply: Uint8Array;
  try {
    reply = await reader.readBytes(noZeroes ? 10 : 134);
  } catch {
    throw new BlockError("ENOENT", "Requested export not available");
  }
  const v = viewOf(reply);
  info.size = exportSize(v, 0);
  info.flags = v.getUint16(8);
  return checked(info);
}

/** QEMU's largest image: INT64_MAX aligned down to its largest alignment (1 GiB). */
const BDRV_MAX_LENGTH = 2n ** 63n - 2n ** 30n;

/**
 * The export size at `at` of `v`: refused as QEMU refuses it past its largest image, and as
 * this client must past 2^53 (`Infinity`, refused by {@link checked}).
 */
function exportSize(v: DataView, at: number): number {
  if (v.getBigUint64(at) > BDRV_MAX_LENGTH) {
    throw new BlockError("EFBIG", "Could not refresh total sector count: File too large");
  }
  return getU64(v, at);
}

function checked(info: ExportInfo): ExportInfo {
  if (!Number.isSafeInteger(info.size)) {
    throw new BlockError("EIO", "The NBD export is too large for this client");
  }
  const pow2 = (n: number) => n > 0 && (n & (n - 1)) === 0;
  if (!pow2(info.minBlock) || info.minBlock > 65536 || info.maxBlock < info.minBlock) {
    throw new BlockError("EIO", `The NBD server sent invalid block sizes (min ${info.minBlock})`);
  }
  info.maxBlock = Math.min(info.maxBlock, NBD_MAX_BUFFER_SIZE);
  return info;
}
