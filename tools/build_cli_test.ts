/**
 * `deno task build`'s bundle as users run it: copied alone under another name and started
 * through its `#!` line, doing real work, including what loads lazily (node:zlib for
 * compressed clusters, node:fs for the threads engine, the native engine's helper thread,
 * node:tls for the daemon's TLS); and the bundle check that guards against `import.meta`.
 *
 * @module
 */

import { deepStrictEqual as assertEquals, ok as assert } from "node:assert";
import { dirname, join } from "node:path";
import { listening, mustPeer, type PeerResult, runPeer, spawnPeer } from "../tests/peer_run.ts";
import { ensurePeers } from "../tests/peers.ts";
import { makeTestPki } from "../tests/tls_certs.ts";
import { buildCli, checkBundle, CLI_BUNDLE_NAME, CLI_SHEBANG } from "./build_cli.ts";

/** PATH with this test's Deno first, for the bundle's `#!/usr/bin/env -S deno ...` line. */
const PATH = `${dirname(Deno.execPath())}:${Deno.env.get("PATH") ?? ""}`;

Deno.test("buildCli bundles the CLI into one executable file that works alone, away from the sources", async (t) => {
  await ensurePeers(["qemu-img", "openssl"]);
  const dir = await Deno.makeTempDir({ prefix: "blockgraph-build-" });
  try {
    const built = await buildCli(join(dir, "out"));
    assertEquals(built, join(dir, "out", CLI_BUNDLE_NAME), "the bundle's path");
    const text = await Deno.readTextFile(built);
    assertEquals(text.slice(0, text.indexOf("\n")), CLI_SHEBANG, "first line");
    assertEquals((await Deno.stat(built)).mode! & 0o777, 0o755, "mode");
    // Installed as a user would: one file under another name, nothing beside it.
    const cli = join(dir, "bin", "blockgraph");
    await Deno.mkdir(dirname(cli));
    await Deno.copyFile(built, cli);
    const work = join(dir, "work");
    await Deno.mkdir(work);
    // As a script under `npm run` or `deno task` starts it: INIT_CWD names another folder,
    // and file names are still taken from the working folder.
    const env = { PATH, INIT_CWD: dir };
    const run = (...args: string[]): Promise<PeerResult> => runPeer(cli, args, { cwd: work, env });
    const must = (...args: string[]): Promise<string> => mustPeer(cli, args, { cwd: work, env });

    await t.step("--version and --help", async () => {
      assert(/^qemu-img version 7\.2\.0 \(blockgraph /.test(await must("img", "--version")));
      assert((await must("--help")).startsWith("Usage: blockgraph COMMAND"));
    });

    await t.step("img create, io write and read, info --output=json", async () => {
      await must("img", "create", "-q", "-f", "qcow2", "a.qcow2", "4M");
      await must("io", "-c", "write -P 0x5a 0 64k", "-c", "write -P 0xa5 1M 64k", "a.qcow2");
      const read = await must(
        "io",
        "-c",
        "read -P 0x5a 0 64k",
        "-c",
        "read -P 0xa5 1M 64k",
        "a.qcow2",
      );
      assert(!read.includes("failed"), read);
      const info = JSON.parse(await must("img", "info", "--output=json", "a.qcow2"));
      assertEquals([info.format, info["virtual-size"]], ["qcow2", 4 << 20]);
    });

    await t.step("img convert -c (node:zlib) and back, img compare", async () => {
      await must("img", "convert", "-c", "-O", "qcow2", "a.qcow2", "c.qcow2");
      const check = await mustPeer("qemu-img", ["check", "--output=json", "c.qcow2"], {
        cwd: work,
      });
      assert(JSON.parse(check)["compressed-clusters"] > 0, check);
      await must("img", "convert", "-O", "raw", "c.qcow2", "b.raw");
      const same = await run("img", "compare", "a.qcow2", "b.raw");
      assertEquals([same.code, same.out], [0, "Images are identical.\n"], same.err);
    });

    await t.step(
      "aio=native starts its helper thread (fallocate), aio=threads (node:fs)",
      async () => {
        const opts = (aio: string) => `driver=file,filename=b.raw,aio=${aio}`;
        const native = await run(
          "io",
          "--image-opts",
          "-c",
          "write -z -u 0 64k",
          "-c",
          "flush",
          "-c",
          "read -P 0 0 64k",
          opts("native"),
        );
        // Nothing on stderr: no "native unavailable ...; using threads", no failed worker.
        assertEquals([native.code, native.err], [0, ""], native.out);
        assert(!native.out.includes("failed"), native.out);
        const map = await mustPeer("qemu-img", ["map", "--output=json", "-f", "raw", "b.raw"], {
          cwd: work,
        });
        assertEquals(JSON.parse(map)[0].data, false, `the punched hole: ${map}`);
        const threads = await must(
          "io",
          "--image-opts",
          "-c",
          "read -P 0xa5 1M 64k",
          opts("threads"),
        );
        assert(!threads.includes("failed"), threads);
      },
    );

    await t.step("daemon serves an export over TLS (node:tls, node:crypto)", async () => {
      const pki = await makeTestPki();
      const sock = join(work, "nbd.sock");
      const daemon = await spawnPeer(
        cli,
        [
          "daemon",
          "--object",
          `tls-creds-x509,id=tls0,endpoint=server,dir=${pki.dir}`,
          "--blockdev",
          "driver=file,node-name=f0,filename=a.qcow2",
          "--blockdev",
          "driver=qcow2,node-name=d0,file=f0",
          "--nbd-server",
          `addr.type=unix,addr.path=${sock},tls-creds=tls0`,
          "--export",
          "type=nbd,id=e0,node-name=d0,name=disk",
        ],
        () => listening(sock),
        60_000,
        { cwd: work, env },
      );
      try {
        const out = await mustPeer("qemu-img", [
          "info",
          "--output=json",
          "--object",
          `tls-creds-x509,id=tls0,endpoint=client,dir=${pki.dir}`,
          "--image-opts",
          `driver=nbd,server.type=unix,server.path=${sock},export=disk,tls-creds=tls0,` +
          "tls-hostname=localhost",
        ]);
        assertEquals(JSON.parse(out)["virtual-size"], 4 << 20, out);
      } finally {
        await daemon.stop();
        await pki.remove();
      }
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("checkBundle refuses a bundle that uses import.meta, saying which and how often", () => {
  checkBundle("await runMain(Deno.args); const meta = 'import.metadata';");
  const refused = (code: string) => {
    try {
      checkBundle(code);
      return "";
    } catch (e) {
      return (e as Error).message;
    }
  };
  assertEquals(
    refused('new Worker(new URL("./w.ts", import.meta.url).href); if (import.meta.main) {}'),
    "The bundle uses import.meta.url (1), import.meta.main (1): in a bundle import.meta is " +
      "the bundle's, not the module's",
  );
  assert(refused("if (import.meta.main) a(); if (import.meta.main) b();").includes("main (2)"));
  assert(refused("const m = import.meta;").includes("import.meta (1)"));
});

Deno.test("checkBundle refuses a bundle that imports a Node module at start-up, not one that imports it where used", () => {
  checkBundle('const zlib = () => import("node:zlib");\nconst s = "from \\"node:fs\\"";');
  let message = "";
  try {
    checkBundle('// x\nimport { Buffer } from "node:buffer";\nimport * as fs from "node:fs";\n');
  } catch (e) {
    message = (e as Error).message;
  }
  assert(message.startsWith("The bundle imports node:buffer, node:fs at start-up"), message);
});
