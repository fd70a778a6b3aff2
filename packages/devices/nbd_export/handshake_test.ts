/**
 * The NBD server's handshake (`handshake.ts`) as a raw client sees it: LIST, unknown exports,
 * options out of order, and the option errors in QEMU 7.2's words.
 */
import { assertEquals } from "@blockgraph/drivers/conformance";
import {
  decodeOptionReplyHeader,
  encodeInfoRequest,
  encodeMetaContextRequest,
  encodeOption,
  Opt,
  Rep,
} from "@blockgraph/drivers/nbd";
import { optionPhase, withServer } from "./testing_server.ts";

Deno.test("NbdServer handshake: LIST, unknown exports, options out of order", async () => {
  await withServer(async ({ sock }) => {
    const { conn, reader, writer } = await optionPhase(sock);
    const reply = async () => {
      const h = decodeOptionReplyHeader(await reader.readBytes(20));
      await reader.readBytes(h.length);
      return h.type;
    };
    writer.copy(encodeOption(Opt.LIST));
    assertEquals([await reply(), await reply()].join(), `${Rep.SERVER},${Rep.ACK}`, "LIST");
    writer.copy(encodeOption(Opt.SET_META_CONTEXT, new Uint8Array(8)));
    assertEquals(await reply(), Rep.ERR_INVALID, "meta context before structured replies");
    writer.copy(encodeOption(Opt.STRUCTURED_REPLY));
    assertEquals(await reply(), Rep.ACK, "structured replies");
    writer.copy(encodeOption(Opt.STRUCTURED_REPLY));
    assertEquals(await reply(), Rep.ERR_INVALID, "structured replies twice");
    writer.copy(encodeOption(Opt.INFO, encodeInfoRequest("nope", [])));
    assertEquals(await reply(), Rep.ERR_UNKNOWN, "INFO of an unknown export");
    writer.copy(encodeOption(Opt.STARTTLS));
    assertEquals(await reply(), Rep.ERR_POLICY, "STARTTLS without TLS");
    writer.copy(encodeOption(99, new Uint8Array(5)));
    assertEquals(await reply(), Rep.ERR_UNSUP, "unknown option");
    writer.copy(encodeOption(Opt.ABORT));
    assertEquals(await reply(), Rep.ACK, "ABORT");
    assertEquals(await reader.need(1).catch(() => false), false, "closed after ABORT");
    conn.close();
  });
});

Deno.test("NbdServer option errors in QEMU 7.2's words; LIST_META_CONTEXT without structured replies", async () => {
  await withServer(async ({ sock }) => {
    const { conn, reader, writer } = await optionPhase(sock);
    const reply = async () => {
      const h = decodeOptionReplyHeader(await reader.readBytes(20));
      const data = await reader.readBytes(h.length);
      return h.type >= 0x80000000
        ? `${h.type - 0x80000000} ${new TextDecoder().decode(data)}`
        : `${h.type} ${data.length}`;
    };
    const ask = async (option: number, data?: Uint8Array) => {
      writer.copy(encodeOption(option, data));
      return await reply();
    };
    const meta = (name: string, q: string[]) => encodeMetaContextRequest(name, q);
    assertEquals(await ask(Opt.LIST, new Uint8Array(1)), "3 option 'list' has unexpected length");
    assertEquals(await ask(Opt.STARTTLS), "2 TLS not configured");
    assertEquals(
      await ask(Opt.STRUCTURED_REPLY, new Uint8Array(1)),
      "3 option 'structured reply' has unexpected length",
    );
    assertEquals(await ask(Opt.GO, new Uint8Array(3)), "3 Inconsistent lengths in option go");
    assertEquals(await ask(Opt.INFO, encodeInfoRequest("zz", [])), "6 export 'zz' not present");
    assertEquals(
      await ask(Opt.SET_META_CONTEXT, meta("disk", ["base:allocation"])),
      "3 request option 'set meta context' when structured reply is not negotiated",
    );
    // Listing is answered without structured replies, each context with id 0 (QEMU 7.2).
    writer.copy(encodeOption(Opt.LIST_META_CONTEXT, meta("disk", [])));
    const h = decodeOptionReplyHeader(await reader.readBytes(20));
    assertEquals(h.type, Rep.META_CONTEXT);
    assertEquals(new DataView((await reader.readBytes(h.length)).buffer).getUint32(0), 0);
    assertEquals(await reply(), `${Rep.ACK} 0`);
    assertEquals(await ask(Opt.STRUCTURED_REPLY), `${Rep.ACK} 0`);
    assertEquals(
      await ask(Opt.STRUCTURED_REPLY),
      "3 structured reply already negotiated",
    );
    assertEquals(
      await ask(Opt.SET_META_CONTEXT, new Uint8Array(6)),
      "3 Inconsistent lengths in option set meta context",
    );
    assertEquals(
      await ask(Opt.SET_META_CONTEXT, meta("zz", ["base:allocation"])),
      "6 export 'zz' not present",
    );
    assertEquals(await ask(99, new Uint8Array(5)), "1 Unsupported option 99 (<unknown>)");
    assertEquals(await ask(4), "1 Unsupported option 4 (peek export)");
    // STARTTLS with data: refused, and the connection ends.
    assertEquals(
      await ask(Opt.STARTTLS, new Uint8Array(1)),
      "3 option 'starttls' has unexpected length",
    );
    assertEquals(await reader.need(1).catch(() => false), false, "closed after a bad STARTTLS");
    conn.close();
  });
});
