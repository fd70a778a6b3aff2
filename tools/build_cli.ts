/**
 * `deno task build`: bundles the `blockgraph` command into one executable file,
 * `dist/blockgraph.js`, for scripts that start it many times.
 *
 * Run from its source, every start loads about 160 modules one by one, each with its own
 * lookups in Deno's transpile and code caches; the bundle is one file and one cache entry,
 * which halves the start-up of a short command (the README has the figures). It starts with
 * a `#!/usr/bin/env -S deno run -A --no-config` line and has the executable bit, so
 * `./dist/blockgraph.js img info x.qcow2` works wherever `deno` is on PATH. Deno looks for a
 * `deno.json` from the script's folder up; `--no-config` keeps whatever it would find there
 * (this workspace's, or an unrelated or broken one) from being read at every start, or from
 * failing it.
 *
 * Usage: `deno task build [OUT_DIR]` (default `dist/` in the repository); it prints the
 * bundle's path. Benchmarks call {@link buildCli} for a fresh bundle of their own.
 *
 * @module
 */

import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

/** The repository's root, where the workspace's `deno.json` is. */
const ROOT = fileURLToPath(new URL("..", import.meta.url));

/** The bundle's entry: the command without `main.ts`'s `$INIT_CWD` (see `cli_entry.ts`). */
const ENTRY = join(ROOT, "tools", "cli_entry.ts");

/** The bundle's file name in the output folder. */
export const CLI_BUNDLE_NAME = "blockgraph.js";

/** The bundle's first line: run it with Deno, every permission, and no `deno.json`. */
export const CLI_SHEBANG = "#!/usr/bin/env -S deno run -A --no-config";

/**
 * Bundles the CLI into `outDir` (made when missing; relative to the working folder; default
 * the repository's `dist/`) as {@link CLI_BUNDLE_NAME}, executable, and returns its absolute
 * path. The file is replaced whole (written beside it and renamed), so a process that starts
 * it meanwhile runs the old or the new one. Throws when `deno bundle` fails, with its
 * message, or when the bundle uses `import.meta`, which only a module file can answer (see
 * {@link checkBundle}).
 *
 * @example
 * ```ts
 * import { buildCli } from "./build_cli.ts"; // from bench/: "../tools/build_cli.ts"
 * const dir = await Deno.makeTempDir();
 * const cli = await buildCli(dir);
 * const out = await new Deno.Command(Deno.execPath(), {
 *   args: ["run", "-A", "--no-config", cli, "img", "--version"],
 * }).output();
 * console.assert(out.success);
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export async function buildCli(outDir: string = join(ROOT, "dist")): Promise<string> {
  const dir = resolve(outDir);
  await Deno.mkdir(dir, { recursive: true });
  const target = join(dir, CLI_BUNDLE_NAME);
  const temp = await Deno.makeTempFile({ dir, prefix: `.${CLI_BUNDLE_NAME}.`, suffix: ".tmp" });
  try {
    const r = await new Deno.Command(Deno.execPath(), {
      args: [
        "bundle",
        "--quiet",
        "--platform=deno",
        "--format=esm",
        `--config=${join(ROOT, "deno.json")}`,
        `--output=${temp}`,
        ENTRY,
      ],
      cwd: ROOT,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).output();
    if (!r.success) {
      const d = new TextDecoder();
      throw new Error(
        `deno bundle ${ENTRY} failed (exit ${r.code}): ${d.decode(r.stderr)}${d.decode(r.stdout)}`,
      );
    }
    const code = await Deno.readTextFile(temp);
    checkBundle(code);
    await Deno.writeTextFile(temp, `${CLI_SHEBANG}\n${code}`);
    await Deno.chmod(temp, 0o755);
    await Deno.rename(temp, target);
  } catch (e) {
    await Deno.remove(temp).catch(() => {});
    throw e;
  }
  return target;
}

/**
 * Throws unless `code`, a bundle, is free of `import.meta` and of static imports of Node
 * modules. A static `node:` import loads that part of Deno's Node layer at every start
 * (`node:buffer` cost `img info` about 4.5 ms), so Node modules are imported where used. In a bundle every inlined
 * module's `import.meta` is the bundle's: a `new URL("./x.ts", import.meta.url)` points
 * beside the bundle, where no `x.ts` is, and an `if (import.meta.main)` would run as if its
 * module were the program. (The entry, `cli_entry.ts`, runs the command without asking.)
 *
 * @example
 * ```ts
 * import { checkBundle } from "./build_cli.ts";
 * checkBundle("await runMain(Deno.args);");
 * let refused = false;
 * try {
 *   checkBundle('new Worker(new URL("./w.ts", import.meta.url));');
 * } catch {
 *   refused = true;
 * }
 * console.assert(refused);
 * ```
 */
export function checkBundle(code: string): void {
  const nodeImports = [...code.matchAll(/^import\b[^;]*?\bfrom\s*"(node:[^"]+)"/gm)].map((m) =>
    m[1]
  );
  if (nodeImports.length > 0) {
    throw new Error(
      `The bundle imports ${nodeImports.join(", ")} at start-up: import Node modules where ` +
        "they are used (import(...)); loading Deno's Node layer costs every command milliseconds",
    );
  }
  const uses = [...code.matchAll(/\bimport\.meta\b(?:\.\w+)?/g)].map((m) => m[0]);
  if (uses.length > 0) {
    const counts = new Map<string, number>();
    for (const u of uses) counts.set(u, (counts.get(u) ?? 0) + 1);
    const found = [...counts].map(([u, n]) => `${u} (${n})`).join(", ");
    throw new Error(
      `The bundle uses ${found}: in a bundle import.meta is the bundle's, not the module's`,
    );
  }
}

if (import.meta.main) {
  // `deno task build` runs in the workspace root; a folder given on the command line is the
  // user's, relative to where they typed it.
  const arg = Deno.args[0];
  const cwd = Deno.env.get("INIT_CWD") ?? Deno.cwd();
  const path = await buildCli(arg === undefined ? undefined : resolve(cwd, arg));
  console.log(path);
}
