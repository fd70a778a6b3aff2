/**
 * TLS for NBD's STARTTLS, shared by the server and the client: x509 credentials loaded from a
 * directory laid out as QEMU's `tls-creds-x509` object wants it (`ca-cert.pem`,
 * `server-cert.pem` and `server-key.pem`, or `client-cert.pem` and `client-key.pem`), and
 * the upgrade of a plain connection to TLS in the middle of the handshake.
 *
 * Deno has no server-side upgrade of an accepted `Deno.Conn` (`Deno.startTls` is client
 * only, and `Deno.listenTls` speaks TLS from the first byte, which STARTTLS cannot use), but
 * `node:tls`'s `TLSSocket` runs over any duplex stream: the plain connection is wrapped in
 * one, so plain connections keep Deno's own sockets and pay nothing for TLS being possible.
 *
 * Client certificates: Deno's `node:tls` server (2.9) asks for one with `requestCert` and
 * refuses a client that sends none, and the handshake proves the client holds the
 * certificate's key, but it does not check the certificate against `ca`: one from any CA, or
 * self-signed, completes the handshake (`authorized` stays false, `authorizationError`
 * null). So {@link startTlsServer} checks it itself once the handshake is done: it must be
 * signed by a CA certificate of `ca-cert.pem` whose name is its issuer, and be within its
 * validity period (what QEMU's gnutls check does for a direct chain; intermediate CAs are
 * not followed).
 *
 * The Node modules this needs are imported at the first upgrade, not with this module:
 * importing any of them starts Deno's Node compatibility layer, about 20 ms of every process
 * start, which a process that never speaks TLS should not pay.
 *
 * @module
 */

import type { X509Certificate } from "node:crypto";
import type { Duplex } from "node:stream";
import type { TLSSocket } from "node:tls";
import { BlockError } from "@blockgraph/core";

const importNodeModules = async () => {
  const [buffer, crypto, stream, tls] = await Promise.all([
    import("node:buffer"),
    import("node:crypto"),
    import("node:stream"),
    import("node:tls"),
  ]);
  return {
    Buffer: buffer.Buffer,
    X509Certificate: crypto.X509Certificate,
    Duplex: stream.Duplex,
    tls,
  };
};
/** The Node modules TLS needs. */
type NodeModules = Awaited<ReturnType<typeof importNodeModules>>;
let nodeModules: NodeModules | null = null;
let nodeModulesLoading: Promise<NodeModules> | null = null;

/** The Node modules TLS needs, imported at the first call. */
function loadNodeModules(): Promise<NodeModules> {
  return nodeModulesLoading ??= importNodeModules().then((m) => nodeModules = m);
}

/** A plain connection that can be upgraded. */
export interface UpgradableConn {
  /** Reads into `p`; null at end of stream. */
  read(p: Uint8Array): Promise<number | null>;
  /** Writes some of `p`. */
  write(p: Uint8Array): Promise<number>;
  /** Closes the connection. */
  close(): void;
}

/** The connection after the upgrade: the same shape, carrying TLS records. */
export interface TlsConn extends UpgradableConn {
  /** Whether the peer presented a certificate the CA signed. */
  readonly peerVerified: boolean;
  /**
   * The distinguished name of the peer's certificate as QEMU's authz checks see it (RDNs in
   * certificate order, `C=GB,O=Example Org,CN=client`), or null without a certificate.
   */
  readonly peerDistinguishedName: string | null;
}

/** x509 credentials (QEMU's `tls-creds-x509` object), loaded. */
export interface X509Creds {
  /** The object id (`tls0`). */
  readonly id: string;
  /** Which end of connections these credentials are for. */
  readonly endpoint: "server" | "client";
  /** The directory they were loaded from. */
  readonly dir: string;
  /** Whether the peer's certificate is checked (and, for a server, required). */
  readonly verifyPeer: boolean;
  /** `ca-cert.pem`. */
  readonly ca: string;
  /** `server-cert.pem` or `client-cert.pem`, when there is one. */
  readonly cert: string | null;
  /** `server-key.pem` or `client-key.pem`, when there is one. */
  readonly key: string | null;
}

/** What {@link loadX509Creds} needs. */
export interface X509CredsOptions {
  /** The object id. */
  id: string;
  /** `server` or `client`. */
  endpoint: "server" | "client";
  /** The directory with the PEM files. */
  dir: string;
  /** Check the peer's certificate (default true, as QEMU's `verify-peer`). */
  verifyPeer?: boolean;
}

async function readPem(dir: string, name: string, required: boolean): Promise<string | null> {
  const path = `${dir}/${name}`;
  try {
    return await Deno.readTextFile(path);
  } catch (e) {
    if (!required && e instanceof Deno.errors.NotFound) return null;
    const why = e instanceof Deno.errors.NotFound
      ? "No such file or directory"
      : (e as Error).message;
    throw new BlockError("EINVAL", `Unable to access credentials ${path}: ${why}`);
  }
}

/**
 * Loads x509 credentials from `dir` with QEMU's rules: the CA certificate is always needed;
 * a server needs its certificate and key; a client's are optional (a server that verifies
 * its peers will want them).
 *
 * @example
 * ```ts
 * import { loadX509Creds } from "@blockgraph/drivers/nbd";
 * try {
 *   await loadX509Creds({ id: "tls0", endpoint: "server", dir: "/nonexistent" });
 * } catch (e) {
 *   console.assert((e as Error).message.includes("ca-cert.pem"));
 * }
 * ```
 */
export async function loadX509Creds(options: X509CredsOptions): Promise<X509Creds> {
  const { id, endpoint, dir } = options;
  const server = endpoint === "server";
  const ca = (await readPem(dir, "ca-cert.pem", true))!;
  const cert = await readPem(dir, server ? "server-cert.pem" : "client-cert.pem", server);
  const key = await readPem(dir, server ? "server-key.pem" : "client-key.pem", server);
  if ((cert === null) !== (key === null)) {
    throw new BlockError("EINVAL", `TLS credentials in ${dir} have a certificate or a key alone`);
  }
  return { id, endpoint, dir, verifyPeer: options.verifyPeer ?? true, ca, cert, key };
}

/** Buffered bytes past which the TLS socket is paused until they are read. */
const HIGH_WATER = 1 << 20;

/** A duplex stream over a plain connection, for `TLSSocket` to carry its records on. */
function duplexOver(conn: UpgradableConn, node: NodeModules): Duplex {
  const { Buffer } = node;
  const buf = new Uint8Array(64 * 1024);
  let pumping = false;
  const d: Duplex = new node.Duplex({
    read() {
      if (pumping) return;
      pumping = true;
      void (async () => {
        for (;;) {
          let n: number | null;
          try {
            n = await conn.read(buf);
          } catch (e) {
            d.destroy(e as Error);
            return;
          }
          if (n === null || n === 0) {
            d.push(null);
            return;
          }
          if (!d.push(Buffer.from(buf.subarray(0, n)))) {
            pumping = false;
            return;
          }
        }
      })();
    },
    write(chunk: Uint8Array, _encoding, done) {
      void (async () => {
        for (let at = 0; at < chunk.length;) at += await conn.write(chunk.subarray(at));
      })().then(() => done(), (e) => done(e as Error));
    },
    destroy(err, done) {
      try {
        conn.close();
      } catch {
        // Already closed.
      }
      done(err);
    },
  });
  return d;
}

/** A `TLSSocket` seen through the read/write/close shape the NBD wire code uses. */
class TlsSocketConn implements TlsConn {
  readonly #sock: TLSSocket;
  readonly #node: NodeModules;
  readonly #chunks: Uint8Array[] = [];
  #head = 0;
  #buffered = 0;
  #ended = false;
  #error: Error | null = null;
  #wake: (() => void) | null = null;
  #paused = false;

  constructor(sock: TLSSocket, node: NodeModules) {
    this.#sock = sock;
    this.#node = node;
    sock.on("data", (b: Uint8Array) => {
      this.#chunks.push(b);
      this.#buffered += b.length;
      if (this.#buffered > HIGH_WATER && !this.#paused) {
        this.#paused = true;
        sock.pause();
      }
      this.#notify();
    });
    sock.on("end", () => {
      this.#ended = true;
      this.#notify();
    });
    sock.on("close", () => {
      this.#ended = true;
      this.#notify();
    });
    sock.on("error", (e: Error) => {
      this.#error ??= e;
      this.#notify();
    });
  }

  /** Set by {@link startTlsServer} once it has checked the client's certificate itself. */
  verified = false;

  get peerVerified(): boolean {
    return this.verified || this.#sock.authorized;
  }

  get peerDistinguishedName(): string | null {
    const cert = this.peerCertificate();
    return cert ? distinguishedName(cert) : null;
  }

  /**
   * Why the server's certificate is not acceptable to a client, in QEMU's (gnutls's) words,
   * or null: it must chain to the CA, and name `hostname` (which a client must have).
   */
  serverCertificateProblem(hostname: string | null): string | null {
    const why = this.#sock.authorizationError as unknown as string | null | undefined;
    if (why) {
      switch (why) {
        case "UNABLE_TO_VERIFY_LEAF_SIGNATURE":
        case "UNABLE_TO_GET_ISSUER_CERT":
        case "UNABLE_TO_GET_ISSUER_CERT_LOCALLY":
        case "DEPTH_ZERO_SELF_SIGNED_CERT":
        case "SELF_SIGNED_CERT_IN_CHAIN":
          return "The certificate hasn't got a known issuer";
        case "CERT_REVOKED":
          return "The certificate has been revoked";
        case "CERT_HAS_EXPIRED":
          return "The certificate has expired";
        case "CERT_NOT_YET_VALID":
          return "The certificate is not yet activated";
        default:
          return "The certificate is not trusted";
      }
    }
    if (hostname === null) return "No hostname for certificate validation";
    const cert = this.#sock.getPeerCertificate();
    if (this.#node.tls.checkServerIdentity(hostname, cert) !== undefined) {
      return `Certificate does not match the hostname ${hostname}`;
    }
    return null;
  }

  /** The certificate the peer presented, or null. */
  peerCertificate(): X509Certificate | null {
    const raw = this.#sock.getPeerCertificate?.()?.raw;
    return raw && raw.length > 0 ? new this.#node.X509Certificate(raw) : null;
  }

  #notify(): void {
    const w = this.#wake;
    this.#wake = null;
    w?.();
  }

  async read(p: Uint8Array): Promise<number | null> {
    while (this.#chunks.length === 0) {
      if (this.#error) throw this.#error;
      if (this.#ended) return null;
      await new Promise<void>((r) => (this.#wake = r));
    }
    let n = 0;
    while (n < p.length && this.#chunks.length > 0) {
      const c = this.#chunks[0]!;
      const k = Math.min(c.length - this.#head, p.length - n);
      p.set(c.subarray(this.#head, this.#head + k), n);
      n += k;
      this.#head += k;
      if (this.#head === c.length) {
        this.#chunks.shift();
        this.#head = 0;
      }
    }
    this.#buffered -= n;
    if (this.#paused && this.#buffered < HIGH_WATER / 2) {
      this.#paused = false;
      this.#sock.resume();
    }
    return n;
  }

  async write(p: Uint8Array): Promise<number> {
    if (this.#error) throw this.#error;
    if (this.#sock.destroyed) throw new Error("The TLS connection is closed");
    // A copy: the caller reuses its buffer as soon as this resolves.
    if (!this.#sock.write(this.#node.Buffer.from(p))) {
      await new Promise<void>((resolve) => {
        const done = () => {
          this.#sock.off("drain", done);
          this.#sock.off("close", done);
          resolve();
        };
        this.#sock.on("drain", done);
        this.#sock.on("close", done);
      });
    }
    return p.length;
  }

  close(): void {
    this.#sock.destroy();
  }
}

/** How long a TLS handshake may take before the connection is dropped (ms). */
const HANDSHAKE_TIMEOUT_MS = 10_000;

function secured(
  node: NodeModules,
  sock: TLSSocket,
  raw: Duplex,
  event: string,
  describe: string,
): Promise<TlsSocketConn> {
  return new Promise<TlsSocketConn>((resolve, reject) => {
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new BlockError("EIO", `TLS handshake with ${describe} timed out`));
    }, HANDSHAKE_TIMEOUT_MS);
    const fail = (e: Error) => {
      clearTimeout(timer);
      sock.destroy();
      reject(new BlockError("EIO", `TLS handshake with ${describe} failed: ${e.message}`));
    };
    // The peer hanging up mid-handshake does not always reach the TLS socket: watch the
    // plain stream under it too.
    const gone = () => fail(new Error("the connection closed"));
    sock.once("error", fail);
    raw.once("end", gone);
    raw.once("close", gone);
    raw.once("error", fail);
    sock.once(event, () => {
      clearTimeout(timer);
      sock.off("error", fail);
      raw.off("end", gone);
      raw.off("close", gone);
      raw.off("error", fail);
      resolve(new TlsSocketConn(sock, node));
    });
  });
}

/**
 * Upgrades an accepted connection to TLS as the server (after the NBD_REP_ACK to
 * NBD_OPT_STARTTLS went out). With `verifyPeer` the client must present a certificate the
 * CA signed. Rejects, having closed `conn`, when the handshake fails (EIO) or the client's
 * certificate is refused (EACCES, with QEMU's reason).
 */
export async function startTlsServer(
  conn: UpgradableConn,
  creds: X509Creds,
): Promise<TlsConn> {
  if (creds.endpoint !== "server") {
    throw new BlockError("EINVAL", "Expected TLS credentials for a server endpoint");
  }
  const node = await loadNodeModules();
  const { tls } = node;
  const raw = duplexOver(conn, node);
  const sock = new tls.TLSSocket(raw, {
    isServer: true,
    requestCert: creds.verifyPeer,
    rejectUnauthorized: creds.verifyPeer,
    secureContext: tls.createSecureContext({
      ca: creds.ca,
      cert: creds.cert ?? undefined,
      key: creds.key ?? undefined,
    }),
  });
  const t = await secured(node, sock, raw, "secure", "the NBD client");
  if (creds.verifyPeer) {
    const why = checkClientCertificate(t.peerCertificate(), creds.ca);
    if (why !== null) {
      t.close();
      throw new BlockError("EACCES", why);
    }
    t.verified = true;
  }
  return t;
}

/** The PEM certificates of a bundle, made with the class of `like`. */
function pemCertificates(bundle: string, like: X509Certificate): X509Certificate[] {
  // `node:crypto` is loaded wherever a certificate exists; a caller may have imported it
  // before this module did, so the class comes from the certificate in hand.
  const X509 = nodeModules?.X509Certificate ?? (like.constructor as typeof X509Certificate);
  const blocks = bundle.match(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g);
  return (blocks ?? []).map((b) => new X509(b));
}

/**
 * Why the client's certificate is not acceptable (QEMU's words), or null: it must be issued
 * and signed by one of the CA certificates in `caBundle`, and valid now.
 */
export function checkClientCertificate(
  cert: X509Certificate | null,
  caBundle: string,
): string | null {
  if (!cert) return "No certificate was found.";
  const now = Date.now();
  if (now < Date.parse(cert.validFrom)) return "The certificate is not yet activated";
  if (now > Date.parse(cert.validTo)) return "The certificate has expired";
  const signed = pemCertificates(caBundle, cert).some((ca) => {
    try {
      return ca.ca && cert.checkIssued(ca) && cert.verify(ca.publicKey);
    } catch {
      return false;
    }
  });
  return signed ? null : "The certificate is not trusted";
}

/**
 * A certificate's subject as QEMU 7.2 (gnutls) prints it for `tls-authz`: the RDNs in the
 * order the certificate holds them, `type=value` joined by commas, with RFC 4514's escapes
 * in the values.
 */
export function distinguishedName(cert: X509Certificate): string {
  return cert.subject.split("\n").filter((l) => l !== "").map((rdn) => {
    const eq = rdn.indexOf("=");
    const value = rdn.slice(eq + 1).replace(/[,+"\\<>;]/g, (c) => `\\${c}`)
      .replace(/^[ #]/, (c) => `\\${c}`).replace(/ $/, "\\ ");
    return `${rdn.slice(0, eq)}=${value}`;
  }).join(",");
}

/**
 * Upgrades a connection to TLS as the client (after the server's NBD_REP_ACK to
 * NBD_OPT_STARTTLS). With `verify-peer` the server's certificate must chain to the CA and
 * name `hostname` (QEMU's client has the host of inet addresses; over a unix socket it needs
 * `tls-hostname`, or refuses: "No hostname for certificate validation"). As QEMU's, the
 * certificate is checked once the handshake is done, and refused with gnutls's reasons.
 */
export async function startTlsClient(
  conn: UpgradableConn,
  creds: X509Creds,
  hostname: string | null,
): Promise<TlsConn> {
  if (creds.endpoint !== "client") {
    throw new BlockError("EINVAL", "Expected TLS credentials for a client endpoint");
  }
  const ip = hostname !== null && /^[\d.]+$|:/.test(hostname);
  const node = await loadNodeModules();
  const { tls } = node;
  const raw = duplexOver(conn, node);
  const sock = tls.connect({
    socket: raw,
    ca: creds.ca,
    ...(creds.cert !== null && creds.key !== null ? { cert: creds.cert, key: creds.key } : {}),
    rejectUnauthorized: false,
    ...(hostname !== null && !ip ? { servername: hostname } : {}),
    checkServerIdentity: () => undefined,
  });
  const t = await secured(node, sock, raw, "secureConnect", "the NBD server");
  if (creds.verifyPeer) {
    const why = t.serverCertificateProblem(hostname);
    if (why !== null) {
      t.close();
      throw new BlockError("EACCES", why);
    }
  }
  return t;
}
