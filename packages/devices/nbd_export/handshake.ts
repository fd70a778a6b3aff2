/**
 * The server's side of the fixed newstyle handshake: the greeting, the client flags, and
 * option haggling (EXPORT_NAME, ABORT, LIST, INFO, GO, STRUCTURED_REPLY, LIST_META_CONTEXT,
 * SET_META_CONTEXT, STARTTLS; anything else is NBD_REP_ERR_UNSUP). With TLS configured the
 * server insists on it, as QEMU's does: before STARTTLS every option but ABORT is answered
 * NBD_REP_ERR_TLS_REQD (NBD_OPT_EXPORT_NAME, which has no error reply, ends the connection).
 *
 * @module
 */

import {
  ClientFlags,
  decodeInfoRequest,
  decodeMetaContextRequest,
  decodeOptionHeader,
  encodeExportNameReply,
  encodeGreeting,
  encodeInfoBlockSize,
  encodeInfoExport,
  encodeInfoString,
  encodeMetaContextReply,
  encodeOptionReply,
  encodeServerReply,
  fromUtf8,
  Info,
  NBD_MAX_OPTION_SIZE,
  Opt,
  OPTION_REQUEST_SIZE,
  optionName,
  Rep,
  utf8,
  type WireReader,
  type WireWriter,
} from "@blockgraph/drivers/nbd";
import type { NbdExport } from "./export.ts";
import { type MetaContext, selectContexts } from "./meta_context.ts";

/** What the handshake settled. */
export interface Negotiated {
  /** The export the client chose. */
  exp: NbdExport;
  /** Whether structured replies were negotiated. */
  structured: boolean;
  /** The metadata contexts selected for block status. */
  contexts: MetaContext[];
}

/** TLS for the handshake: the server's credentials, and how to switch the socket over. */
export interface HandshakeTls {
  /**
   * Runs the TLS handshake on the connection once the ACK to NBD_OPT_STARTTLS has been sent;
   * rejects when it fails (the connection then ends).
   */
  upgrade(): Promise<void>;
}

/** What the handshake needs of the server. */
export interface ExportLookup {
  /** The export called `name`, if it is being served. */
  findExport(name: string): NbdExport | undefined;
  /** Every export being served, for NBD_OPT_LIST. */
  exports(): NbdExport[];
}

const ALL_CLIENT_FLAGS = ClientFlags.FIXED_NEWSTYLE | ClientFlags.NO_ZEROES;

/**
 * Runs the handshake. Resolves to what was settled when the client entered transmission, or
 * null when the client aborted, broke the protocol or asked for an export that does not
 * exist with NBD_OPT_EXPORT_NAME (all of which end the connection).
 */
export async function serverHandshake(
  reader: WireReader,
  writer: WireWriter,
  lookup: ExportLookup,
  tls: HandshakeTls | null = null,
): Promise<Negotiated | null> {
  writer.copy(encodeGreeting());
  if (!(await reader.need(4))) return null;
  const clientFlags = reader.view.getUint32(reader.pos);
  reader.consume(4);
  if (clientFlags & ~ALL_CLIENT_FLAGS) return null;
  const fixed = (clientFlags & ClientFlags.FIXED_NEWSTYLE) !== 0;
  const noZeroes = (clientFlags & ClientFlags.NO_ZEROES) !== 0;
  let structured = false;
  let contexts: MetaContext[] = [];
  let contextsFor = "";
  let tlsDone = tls === null;

  const reply = (option: number, type: number, data?: Uint8Array) =>
    writer.copy(encodeOptionReply(option, type, data));
  const fail = (option: number, type: number, message: string) =>
    reply(option, type, utf8(message));
  // QEMU's words for an option whose data does not parse or should not be there.
  const badLength = (option: number) =>
    fail(option, Rep.ERR_INVALID, `option '${optionName(option)}' has unexpected length`);
  const inconsistent = (option: number) =>
    fail(option, Rep.ERR_INVALID, `Inconsistent lengths in option ${optionName(option)}`);
  const notPresent = (option: number, name: string) =>
    fail(option, Rep.ERR_UNKNOWN, `export '${name}' not present`);

  for (;;) {
    if (!(await reader.need(OPTION_REQUEST_SIZE))) return null;
    const header = decodeOptionHeader(reader.buf.subarray(reader.pos, reader.pos + 16));
    reader.consume(OPTION_REQUEST_SIZE);
    if (!header || header.length > NBD_MAX_OPTION_SIZE) return null;
    const { option, length } = header;
    const data = await reader.readBytes(length);
    if (!tlsDone && option !== Opt.STARTTLS) {
      // NBD_OPT_EXPORT_NAME cannot be refused: the connection ends instead.
      if (option === Opt.EXPORT_NAME || !fixed) return null;
      fail(option, Rep.ERR_TLS_REQD, `Option 0x${option.toString(16)} not permitted before TLS`);
      // ABORT too is refused before TLS, as QEMU does, and then the connection ends.
      if (option === Opt.ABORT) {
        await writer.idle();
        return null;
      }
      continue;
    }
    if (option === Opt.EXPORT_NAME) {
      let name: string;
      try {
        name = fromUtf8(data);
      } catch {
        return null;
      }
      const exp = lookup.findExport(name);
      if (!exp || exp.shuttingDown) return null;
      if (contextsFor !== name) contexts = [];
      writer.copy(encodeExportNameReply(exp.size(), exp.transmissionFlags(structured), noZeroes));
      return { exp, structured, contexts };
    }
    // Old newstyle clients may only send NBD_OPT_EXPORT_NAME.
    if (!fixed) return null;
    switch (option) {
      case Opt.ABORT:
        reply(option, Rep.ACK);
        await writer.idle();
        return null;
      case Opt.LIST:
        if (length !== 0) {
          badLength(option);
          break;
        }
        for (const exp of lookup.exports()) {
          if (!exp.shuttingDown) {
            reply(option, Rep.SERVER, encodeServerReply(exp.name, exp.description));
          }
        }
        reply(option, Rep.ACK);
        break;
      case Opt.STARTTLS:
        // A client that cannot start TLS correctly is dropped, as QEMU does.
        if (length !== 0) {
          badLength(option);
          await writer.idle();
          return null;
        }
        if (tls === null) fail(option, Rep.ERR_POLICY, "TLS not configured");
        else if (tlsDone) fail(option, Rep.ERR_INVALID, "TLS already enabled");
        else {
          reply(option, Rep.ACK);
          await writer.idle();
          // A client that sent more before the ACK is out of step: setConn refuses it.
          await tls.upgrade();
          tlsDone = true;
        }
        break;
      case Opt.STRUCTURED_REPLY:
        if (length !== 0) badLength(option);
        else if (structured) fail(option, Rep.ERR_INVALID, "structured reply already negotiated");
        else {
          structured = true;
          reply(option, Rep.ACK);
        }
        break;
      case Opt.INFO:
      case Opt.GO: {
        const req = decodeInfoRequest(data);
        if (!req) {
          inconsistent(option);
          break;
        }
        const exp = lookup.findExport(req.name);
        if (!exp || exp.shuttingDown) {
          notPresent(option, req.name);
          break;
        }
        const sizes = exp.blockSizes();
        if (option === Opt.GO && sizes.minimum > 1 && !req.infos.includes(Info.BLOCK_SIZE)) {
          fail(
            option,
            Rep.ERR_BLOCK_SIZE_REQD,
            "request NBD_INFO_BLOCK_SIZE to use this export",
          );
          break;
        }
        if (req.infos.includes(Info.NAME)) {
          reply(option, Rep.INFO, encodeInfoString(Info.NAME, exp.name));
        }
        if (req.infos.includes(Info.DESCRIPTION) && exp.description) {
          reply(option, Rep.INFO, encodeInfoString(Info.DESCRIPTION, exp.description));
        }
        reply(option, Rep.INFO, encodeInfoBlockSize(sizes));
        reply(option, Rep.INFO, encodeInfoExport(exp.size(), exp.transmissionFlags(structured)));
        reply(option, Rep.ACK);
        if (option === Opt.GO) {
          if (contextsFor !== req.name) contexts = [];
          return { exp, structured, contexts };
        }
        break;
      }
      case Opt.LIST_META_CONTEXT:
      case Opt.SET_META_CONTEXT: {
        const list = option === Opt.LIST_META_CONTEXT;
        // Listing needs no structured replies (QEMU answers it without them); setting does.
        if (!list && !structured) {
          fail(
            option,
            Rep.ERR_INVALID,
            `request option '${optionName(option)}' when structured reply is not negotiated`,
          );
          break;
        }
        const req = decodeMetaContextRequest(data);
        if (!req) {
          inconsistent(option);
          break;
        }
        const exp = lookup.findExport(req.name);
        if (!exp || exp.shuttingDown) {
          notPresent(option, req.name);
          break;
        }
        const chosen = selectContexts(req.queries, list, exp);
        if (!list) {
          contexts = chosen;
          contextsFor = req.name;
        }
        // A listed context has no id yet: QEMU sends 0 for each.
        for (const c of chosen) {
          reply(option, Rep.META_CONTEXT, encodeMetaContextReply(list ? 0 : c.id, c.name));
        }
        reply(option, Rep.ACK);
        break;
      }
      default:
        fail(option, Rep.ERR_UNSUP, `Unsupported option ${option} (${optionName(option)})`);
    }
  }
}
