/**
 * The NBD server's test fixture, shared by its test files: a served disk, and raw clients
 * that speak the protocol byte by byte.
 *
 * @module
 */

import { type BlockDriver, Graph, type Node } from "@blockgraph/core";
import { defaultRegistry } from "@blockgraph/drivers";
import { assertEquals } from "@blockgraph/drivers/conformance";
import {
  clientHandshake,
  encodeRequest,
  type ExportInfo,
  newRequestHeader,
  ReplyType,
  WireReader,
  WireWriter,
} from "@blockgraph/drivers/nbd";
import { NbdServer } from "./server.ts";

/** The size of the exported test disk. */
export const SIZE = 8 << 20;

/** What {@link withServer} hands a test. */
export interface Fixture {
  graph: Graph;
  node: Node;
  server: NbdServer;
  sock: string;
}

/**
 * Serves a fresh disk (memory, a driver of the test's, or a file) as export `disk` (id `e0`)
 * on a unix socket for `fn`, then stops the server and closes the graph.
 */
export async function withServer(
  fn: (f: Fixture) => Promise<void>,
  opts: { writable?: boolean; maxConnections?: number; driver?: BlockDriver; file?: string } = {},
): Promise<void> {
  const registry = defaultRegistry();
  if (opts.driver) registry.register(opts.driver);
  const graph = new Graph({ registry });
  const node = await graph.open(
    opts.file ? { driver: "file", filename: opts.file, "node-name": "disk" } : {
      driver: opts.driver?.name ?? "memory",
      size: SIZE,
      discard: "unmap",
      "node-name": "disk",
    },
    "test",
  );
  const dir = await Deno.makeTempDir({ prefix: "nbd-server-" });
  const sock = `${dir}/nbd.sock`;
  const server = new NbdServer({
    addr: { type: "unix", path: sock },
    maxConnections: opts.maxConnections ?? 0,
  });
  server.start();
  await server.addExport(graph, {
    id: "e0",
    "node-name": "disk",
    name: "disk",
    writable: opts.writable ?? true,
  });
  try {
    await fn({ graph, node, server, sock });
  } finally {
    await server.stop();
    await node.unref("test");
    await graph.closeAll();
    await Deno.remove(dir, { recursive: true });
  }
}

/** A raw client connection after the handshake. */
export interface Raw {
  conn: Deno.Conn;
  reader: WireReader;
  writer: WireWriter;
  info: ExportInfo;
}

/** Connects a raw client to export `name` on `sock` (structured replies negotiated). */
export async function raw(sock: string, name = "disk"): Promise<Raw> {
  const conn = await Deno.connect({ transport: "unix", path: sock });
  const reader = new WireReader(conn);
  const writer = new WireWriter(conn);
  const info = await clientHandshake(reader, writer, name);
  return { conn, reader, writer, info };
}

let cookie = 1;
/** Sends a request with the next cookie (high half 7); returns its low half. */
export function send(
  r: Raw,
  type: number,
  flags: number,
  offset: number,
  length: number,
  data?: Uint8Array,
) {
  const h = newRequestHeader();
  Object.assign(h, { type, flags, offset, length, cookieHi: 7, cookieLo: cookie++ });
  const at = r.writer.claim(28);
  encodeRequest(r.writer.view, at, h);
  if (data) r.writer.copy(data);
  return h.cookieLo;
}

/** Reads one structured chunk: its cookie, type, flags and payload. */
export async function chunk(
  r: Raw,
): Promise<{ cookie: number; type: number; flags: number; data: Uint8Array }> {
  const head = await r.reader.readBytes(20);
  const v = new DataView(head.buffer);
  assertEquals(v.getUint32(0), 0x668e33ef, "structured reply magic");
  assertEquals(v.getUint32(8), 7, "cookie high half echoed");
  return {
    cookie: v.getUint32(12),
    type: v.getUint16(6),
    flags: v.getUint16(4),
    data: await r.reader.readBytes(v.getUint32(16)),
  };
}

/** Reads an error chunk with `errno`; returns its message. */
/** Reads an error chunk and checks its errno; returns its message. */
export async function expectError(r: Raw, errno: number, what: string): Promise<string> {
  const c = await chunk(r);
  assertEquals(c.type, ReplyType.ERROR, `${what}: chunk type`);
  const v = new DataView(c.data.buffer);
  assertEquals(v.getUint32(0), errno, `${what}: error value`);
  return new TextDecoder().decode(c.data.subarray(6, 6 + v.getUint16(4)));
}

/** Whether the server closed the connection (a read sees the end of the stream). */
export async function closedByServer(r: Raw): Promise<boolean> {
  try {
    return !(await r.reader.need(1));
  } catch {
    return true;
  }
}

/**
 * A raw client in the option phase of `sock`: the greeting read, the fixed newstyle and
 * no-zeroes client flags sent.
 */
export async function optionPhase(sock: string) {
  const conn = await Deno.connect({ transport: "unix", path: sock });
  const reader = new WireReader(conn);
  const writer = new WireWriter(conn);
  await reader.readBytes(18);
  writer.copy(new Uint8Array([0, 0, 0, 3]));
  return { conn, reader, writer };
}
