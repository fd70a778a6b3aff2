import { type BlockError, DriverRegistry, Graph } from "@blockgraph/core";
import { assertEquals } from "../../conformance/mod.ts";
import {
  Cmd,
  decodeErrorPayload,
  decodeInfoRequest,
  decodeMetaContextRequest,
  decodeReply,
  decodeRequest,
  encodeChunkHeader,
  encodeErrorPayload,
  encodeInfoRequest,
  encodeMetaContextRequest,
  encodeRequest,
  encodeSimpleReply,
  fromNbdErrno,
  getU64,
  newReplyHeader,
  newRequestHeader,
  parseNbdFilename,
  replyHeaderSize,
  setU64,
  toNbdErrno,
} from "./mod.ts";
import { nbdDriver } from "./driver.ts";

Deno.test("nbd request headers round-trip, cookies bit for bit and offsets past 2^32", () => {
  const buf = new Uint8Array(28);
  const v = new DataView(buf.buffer);
  const h = newRequestHeader();
  Object.assign(h, {
    flags: 1,
    type: Cmd.WRITE,
    cookieHi: 0xdeadbeef,
    cookieLo: 0xfeedf00d,
    offset: 2 ** 40 + 3,
    length: 4096,
  });
  encodeRequest(v, 0, h);
  assertEquals(buf[0], 0x25, "magic first byte");
  const out = newRequestHeader();
  assertEquals(decodeRequest(v, 0, out), true, "decodes");
  assertEquals(JSON.stringify(out), JSON.stringify(h), "same header");
  buf[0] = 0;
  assertEquals(decodeRequest(v, 0, out), false, "bad magic refused");
  setU64(v, 16, 0);
  v.setUint32(16, 0x00200000);
  assertEquals(getU64(v, 16), Infinity, "offsets at 2^53 decode as Infinity");
});

Deno.test("nbd reply headers: simple and structured decode by their magic", () => {
  const buf = new Uint8Array(20);
  const v = new DataView(buf.buffer);
  const r = newReplyHeader();
  encodeSimpleReply(v, 0, 22, 1, 2);
  assertEquals(replyHeaderSize(v.getUint32(0)), 16, "simple size");
  decodeReply(v, 0, r);
  assertEquals([r.structured, r.error, r.cookieHi, r.cookieLo].join(), "false,22,1,2", "simple");
  encodeChunkHeader(v, 0, 1, 5, 3, 4, 12);
  assertEquals(replyHeaderSize(v.getUint32(0)), 20, "structured size");
  decodeReply(v, 0, r);
  assertEquals(
    [r.structured, r.flags, r.type, r.cookieLo, r.length].join(),
    "true,1,5,4,12",
    "chunk",
  );
  assertEquals(replyHeaderSize(0x12345678), 0, "unknown magic");
});

Deno.test("nbd option payloads round-trip and malformed ones are refused", () => {
  const info = decodeInfoRequest(encodeInfoRequest("disk é", [3, 1]));
  assertEquals(JSON.stringify(info), JSON.stringify({ name: "disk é", infos: [3, 1] }), "info");
  assertEquals(decodeInfoRequest(new Uint8Array([0, 0, 0, 9, 0, 0])), null, "name too long");
  const meta = decodeMetaContextRequest(encodeMetaContextRequest("d", ["base:", "qemu:x"]));
  assertEquals(
    JSON.stringify(meta),
    JSON.stringify({ name: "d", queries: ["base:", "qemu:x"] }),
    "meta",
  );
  const bad = encodeMetaContextRequest("d", ["base:allocation"]);
  assertEquals(decodeMetaContextRequest(bad.subarray(0, bad.length - 1)), null, "truncated query");
  const e = decodeErrorPayload(encodeErrorPayload(5, "boom", 4096));
  assertEquals(
    JSON.stringify(e),
    JSON.stringify({ error: 5, message: "boom", offset: 4096 }),
    "err",
  );
});

Deno.test("nbd errors map onto the protocol's few values and back", () => {
  assertEquals(toNbdErrno("EROFS"), 1, "EROFS is EPERM");
  assertEquals(toNbdErrno("EFBIG"), 28, "EFBIG is ENOSPC");
  assertEquals(toNbdErrno("ENOMEDIUM"), 5, "other failures are EIO");
  assertEquals(toNbdErrno("ENOTSUP"), 95, "ENOTSUP");
  assertEquals(fromNbdErrno(108), "ESHUTDOWN", "ESHUTDOWN");
  assertEquals(fromNbdErrno(9999), "EINVAL", "unknown values are EINVAL");
});

Deno.test("parseNbdFilename takes QEMU's TCP and unix URIs and refuses malformed ones", () => {
  assertEquals(
    JSON.stringify(parseNbdFilename("nbd://127.0.0.1:10888/disk%200")),
    JSON.stringify({
      export: "disk 0",
      "server.type": "inet",
      "server.host": "127.0.0.1",
      "server.port": "10888",
    }),
    "tcp",
  );
  assertEquals(parseNbdFilename("nbd://[::1]/x")["server.host"], "::1", "IPv6 host");
  assertEquals(parseNbdFilename("nbd://h")["server.port"], "10809", "default port");
  assertEquals(parseNbdFilename("nbd://h").export, undefined, "no export name");
  const u = parseNbdFilename("nbd+unix:///d?socket=/tmp/s.sock");
  assertEquals([u["server.type"], u["server.path"], u.export].join(), "unix,/tmp/s.sock,d", "unix");
  for (const bad of ["nbd+unix:///d", "nbd://", "nbd+unix://h/d?socket=/x", "nbd://h/d?x=1"]) {
    let code = "";
    try {
      parseNbdFilename(bad);
    } catch (e) {
      code = (e as BlockError).code;
    }
    assertEquals(code, "EINVAL", bad);
  }
});

Deno.test("nbd driver reports a refused connection naming the socket, as QEMU", async () => {
  const graph = new Graph({ registry: new DriverRegistry([nbdDriver]) });
  const dir = await Deno.makeTempDir();
  let message = "";
  try {
    await graph.open({ filename: `nbd+unix:///x?socket=${dir}/none.sock` }, "t");
  } catch (e) {
    message = (e as Error).message;
  }
  assertEquals(
    message === `Failed to connect to '${dir}/none.sock': No such file or directory`,
    true,
    message,
  );
  await graph.closeAll();
  await Deno.remove(dir, { recursive: true });
});
