/**
 * The descriptor under an accepted Deno connection. Deno does not hand out the descriptors
 * of its sockets; a server that wants to `sendfile(2)` to one (`host_send.ts`) finds it by
 * looking at its own open descriptors (`/proc/self/fd`) for the socket whose addresses are
 * the connection's:
 *
 * - TCP: the socket whose local and peer addresses (`getsockname`, `getpeername`) are the
 *   connection's. The pair is unique among the process's sockets.
 * - Unix: accepted sockets all carry the listener's path and an unnamed peer, so addresses
 *   cannot tell them apart. The server asks right after each accept, before it accepts
 *   again, and takes the one socket on its path that no live connection has claimed (by
 *   inode). A socket whose connection has closed but whose descriptor Deno has not closed
 *   yet makes two candidates.
 *
 * Whenever the answer is not exactly one socket, it is null, and the caller keeps to Deno's
 * own writes. The descriptor belongs to Deno: never close it, and stop using it before the
 * connection is closed.
 *
 * @module
 */

import { socketLibc } from "./socket_libc.ts";

const SHUT_RDWR = 2;
const AF_UNIX = 1;
const AF_INET = 2;
const AF_INET6 = 10;

/** A connection's socket descriptor, and the socket's inode (what a claim is kept by). */
export interface ConnSocket {
  /** The descriptor (Deno's: never close it). */
  readonly fd: number;
  /** The socket's inode, from `/proc/self/fd`. */
  readonly inode: number;
  /** A unix socket (else TCP). */
  readonly unix: boolean;
}

const addr = new Uint8Array(128);
const addrLen = new Uint32Array(1);
const addrLenBytes = new Uint8Array(addrLen.buffer);

/**
 * Shuts both directions of socket `fd` down (`shutdown(2)`) without closing the descriptor,
 * which stays Deno's: a write or `sendfile` waiting on a peer that does not read fails at
 * once (EPIPE), and a read sees the end of the stream. For ending a connection whose peer
 * has stopped reading, where `close()` would have to wait for those writes first. A socket
 * already disconnected is left as it is.
 */
export function shutdownSocket(fd: number): void {
  socketLibc().shutdown(fd, SHUT_RDWR);
}

/** The address `call` reports for `fd` as a comparable string, or null. */
function sockAddr(fd: number, peer: boolean): string | null {
  const lib = socketLibc();
  addrLen[0] = addr.length;
  const rc = peer
    ? lib.getpeername(fd, addr, addrLenBytes)
    : lib.getsockname(fd, addr, addrLenBytes);
  if (rc !== 0) return null;
  const len = Math.min(addrLen[0]!, addr.length);
  const family = addr[0]! | (addr[1]! << 8);
  const port = (addr[2]! << 8) | addr[3]!;
  if (family === AF_INET) return `${addr[4]}.${addr[5]}.${addr[6]}.${addr[7]}:${port}`;
  if (family === AF_INET6) {
    const words: string[] = [];
    for (let i = 8; i < 24; i += 2) words.push(((addr[i]! << 8) | addr[i + 1]!).toString(16));
    return `[${words.join(":")}]:${port}`;
  }
  if (family === AF_UNIX) {
    let end = 2;
    while (end < len && addr[end] !== 0) end++;
    return `unix:${new TextDecoder().decode(addr.subarray(2, end))}`;
  }
  return null;
}

/** A Deno address in {@link sockAddr}'s form. */
function denoAddr(a: Deno.Addr): string | null {
  if (a.transport === "tcp") {
    if (!a.hostname.includes(":")) return `${a.hostname}:${a.port}`;
    // Expand an IPv6 text form to eight plain hex words.
    const [head, tail] = a.hostname.split("::") as [string, string | undefined];
    const h = head === "" ? [] : head.split(":");
    const t = tail === undefined || tail === "" ? [] : tail.split(":");
    if (h.concat(t).some((w) => w.includes("."))) return null; // IPv4-mapped: not worth it
    const zeros = tail === undefined ? [] : new Array(8 - h.length - t.length).fill("0");
    const words = [...h, ...zeros, ...t].map((w) => parseInt(w, 16).toString(16));
    return `[${words.join(":")}]:${a.port}`;
  }
  if (a.transport === "unix") return `unix:${a.path}`;
  return null;
}

/**
 * Finds the sockets of the connections one listener accepts, and remembers which it handed
 * out until {@link ListenerSockets.release} (unix sockets need that; see the module doc).
 */
export class ListenerSockets {
  readonly #claimed = new Set<number>();

  /**
   * The socket of `conn`, just accepted (for a unix socket: before the next accept), or null
   * when it cannot be told for certain, FFI is unavailable, or the transport is neither TCP
   * nor unix.
   */
  find(conn: Deno.Conn): ConnSocket | null {
    try {
      return this.#find(conn);
    } catch {
      return null;
    }
  }

  #find(conn: Deno.Conn): ConnSocket | null {
    const local = denoAddr(conn.localAddr);
    const unix = conn.localAddr.transport === "unix";
    const remote = unix ? null : denoAddr(conn.remoteAddr);
    if (local === null || (!unix && remote === null)) return null;
    socketLibc();
    const found = new Map<number, number>(); // inode -> fd
    let twice = false;
    for (const e of Deno.readDirSync("/proc/self/fd")) {
      const fd = Number(e.name);
      let link: string;
      try {
        link = Deno.readLinkSync(`/proc/self/fd/${fd}`);
      } catch {
        continue;
      }
      const m = /^socket:\[(\d+)\]$/.exec(link);
      if (!m) continue;
      const inode = Number(m[1]);
      if (this.#claimed.has(inode)) continue;
      if (sockAddr(fd, false) !== local) continue;
      if (unix) {
        // A listening socket has no peer; an accepted one reports its (unnamed) peer.
        if (sockAddr(fd, true) === null) continue;
      } else if (sockAddr(fd, true) !== remote) {
        continue;
      }
      if (found.has(inode)) twice = true;
      found.set(inode, fd);
    }
    if (found.size !== 1 || twice) return null;
    const [inode, fd] = found.entries().next().value!;
    if (unix) this.#claimed.add(inode);
    return { fd, inode, unix };
  }

  /** Forgets the claim on `s` once its connection is closed. */
  release(s: ConnSocket): void {
    this.#claimed.delete(s.inode);
  }
}
