/**
 * Throwaway x509 certificates for TLS tests, made with `openssl` in a temporary directory laid
 * out as QEMU's `tls-creds-x509` object and libnbd want it: `ca-cert.pem`, `server-cert.pem`,
 * `server-key.pem`, `client-cert.pem`, `client-key.pem` (one directory serves both ends).
 *
 * @module
 */

import { ensurePeers } from "./peers.ts";
import { freePort, listening, type PeerServer, spawnPeer } from "./peer_run.ts";

/** A directory of test credentials. */
export interface TestPki {
  /** The directory. */
  readonly dir: string;
  /** Deletes it. */
  remove(): Promise<void>;
}

async function openssl(dir: string, args: string[]): Promise<void> {
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(), 30_000);
  try {
    const r = await new Deno.Command("openssl", {
      args,
      cwd: dir,
      stdout: "null",
      stderr: "piped",
      signal: ac.signal,
    }).output();
    if (!r.success) {
      throw new Error(`openssl ${args.join(" ")} failed: ${new TextDecoder().decode(r.stderr)}`);
    }
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Makes a CA, a server certificate for `localhost` and `127.0.0.1`, and a client certificate,
 * both signed by the CA (EC P-256 keys: fast to make).
 */
export async function makeTestPki(): Promise<TestPki> {
  await ensurePeers(["openssl"]);
  const dir = await Deno.makeTempDir({ prefix: "blockgraph-pki-" });
  try {
    const key = (name: string) =>
      openssl(dir, [
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        name,
      ]);
    await key("ca-key.pem");
    await openssl(dir, [
      "req",
      "-x509",
      "-new",
      "-key",
      "ca-key.pem",
      "-out",
      "ca-cert.pem",
      "-days",
      "2",
      "-subj",
      "/CN=blockgraph test CA",
    ]);
    for (
      const [who, ext] of [
        ["server", "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"],
        ["client", "extendedKeyUsage=clientAuth\n"],
      ] as const
    ) {
      await key(`${who}-key.pem`);
      await openssl(dir, [
        "req",
        "-new",
        "-key",
        `${who}-key.pem`,
        "-out",
        `${who}.csr`,
        "-subj",
        `/CN=${who === "server" ? "localhost" : "client"}`,
      ]);
      await Deno.writeTextFile(
        `${dir}/${who}.ext`,
        `basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n${ext}`,
      );
      await openssl(dir, [
        "x509",
        "-req",
        "-in",
        `${who}.csr`,
        "-CA",
        "ca-cert.pem",
        "-CAkey",
        "ca-key.pem",
        "-CAcreateserial",
        "-out",
        `${who}-cert.pem`,
        "-days",
        "2",
        "-extfile",
        `${who}.ext`,
      ]);
    }
  } catch (e) {
    await Deno.remove(dir, { recursive: true });
    throw e;
  }
  return { dir, remove: () => Deno.remove(dir, { recursive: true }) };
}

/**
 * Makes a client credentials directory for `subject` (openssl's `/C=GB/O=Org/CN=name`):
 * `ca-cert.pem` of `pki` and a `client-cert.pem`/`client-key.pem` pair signed by its CA, or
 * with `selfSigned` by nobody the server trusts. Returns the directory (inside `pki.dir`).
 */
export async function makeClientCreds(
  pki: TestPki,
  name: string,
  subject: string,
  selfSigned = false,
): Promise<string> {
  const dir = `${pki.dir}/${name}`;
  await Deno.mkdir(dir);
  await Deno.copyFile(`${pki.dir}/ca-cert.pem`, `${dir}/ca-cert.pem`);
  const key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
  if (selfSigned) {
    await openssl(dir, [
      "req",
      "-x509",
      ...key,
      "-keyout",
      "client-key.pem",
      "-out",
      "client-cert.pem",
      "-days",
      "2",
      "-subj",
      subject,
    ]);
    return dir;
  }
  await openssl(dir, [
    "req",
    "-new",
    ...key,
    "-keyout",
    "client-key.pem",
    "-out",
    "client.csr",
    "-subj",
    subject,
  ]);
  await Deno.writeTextFile(
    `${dir}/client.ext`,
    "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n" +
      "extendedKeyUsage=clientAuth\n",
  );
  await openssl(dir, [
    "x509",
    "-req",
    "-in",
    "client.csr",
    "-CA",
    "../ca-cert.pem",
    "-CAkey",
    "../ca-key.pem",
    "-CAcreateserial",
    "-out",
    "client-cert.pem",
    "-days",
    "2",
    "-extfile",
    "client.ext",
  ]);
  return dir;
}

/**
 * Starts `qemu-nbd` serving the raw `image` read-write as export `disk` over TLS with the
 * server credentials of `pki`, on 127.0.0.1 at a free port; resolves once it listens.
 */
export async function spawnTlsQemuNbd(
  pki: TestPki,
  image: string,
): Promise<{ port: number; server: PeerServer }> {
  const port = freePort();
  const server = await spawnPeer("qemu-nbd", [
    "--object",
    `tls-creds-x509,id=tls0,endpoint=server,dir=${pki.dir}`,
    "--tls-creds",
    "tls0",
    "-f",
    "raw",
    "-b",
    "127.0.0.1",
    "-p",
    String(port),
    "-x",
    "disk",
    "-t",
    image,
  ], () => listening(port));
  return { port, server };
}
