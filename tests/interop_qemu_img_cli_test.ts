/**
 * `blockgraph img`'s command line against qemu-img 7.2: help (`-h`, `--help` on every
 * subcommand), `--version`, `--object`, `-o help`, the error paths (missing arguments,
 * bad sizes, unknown formats, missing files, `-f` mismatches), and `json:` filenames (as
 * arguments and in image headers) and the `json:{...}` names QEMU gives nodes. Each case runs both tools on
 * fresh copies of the same small images and compares stdout, stderr and the exit status.
 * The only text allowed to differ is the version banner and the list of formats.
 * `IMG_CLI_TRACE=1` prints each case as it runs; `IMG_CLI_REPORT=file` writes every
 * mismatch there as JSON.
 *
 * @module
 */

import { deepStrictEqual as assertEquals } from "node:assert";
import { runOurImg } from "./cli_run.ts";
import { ensurePeers } from "./peers.ts";
import { type PeerResult, runPeer } from "./peer_run.ts";
import { encryptionCases, imageOptsCases } from "./qemu_img_cli_option_cases.ts";

/**
 * Small images: a raw, a qcow2, an overlay on it, a compat=0.10 qcow2, a qcow2 with a
 * snapshot, and overlays whose headers name json: backing files (as libvirt writes them) over
 * a patterned raw: `j.qcow2` by its absolute path, `jr.qcow2` by a relative one (taken from
 * the working directory, not the image's).
 */
async function makeImages(dir: string): Promise<void> {
  const q = (...args: string[]) => runPeer("qemu-img", args, { cwd: dir });
  await q("create", "-q", "-f", "raw", "jb.raw", "1M");
  await q("create", "-q", "-f", "raw", "\u00e9.raw", "1M");
  await runPeer("qemu-io", ["-f", "raw", "-c", "write -q -P 0x5a 0 64k", "jb.raw"], { cwd: dir });
  await q("create", "-q", "-f", "qcow2", "-b", jsonRaw(`${dir}/jb.raw`), "-F", "raw", "j.qcow2");
  await q("create", "-q", "-f", "qcow2", "-b", jsonRaw("jb.raw"), "-F", "raw", "jr.qcow2");
  await q("create", "-q", "-f", "raw", "r.raw", "1M");
  await q("create", "-q", "-f", "qcow2", "q.qcow2", "1M");
  await q("create", "-q", "-f", "qcow2", "-b", "q.qcow2", "-F", "qcow2", "t.qcow2");
  await q("create", "-q", "-f", "qcow2", "-o", "compat=0.10", "v2.qcow2", "1M");
  await q("create", "-q", "-f", "qcow2", "s.qcow2", "1M");
  await q("snapshot", "-c", "s1", "s.qcow2");
  await q("create", "-q", "-f", "qcow2", "-u", "-b", "gone.qcow2", "-F", "qcow2", "o.qcow2", "1M");
}

/** A json: filename of a raw image over the file `path`, as libvirt writes backing names. */
function jsonRaw(path: string, extra = ""): string {
  return `json:{"driver":"raw",${extra}"file":{"driver":"file","filename":"${path}"}}`;
}

/** `json:` filenames (QEMU's pseudo-protocol) and the filenames QEMU makes of options. */
function jsonCases(): string[][] {
  const jq = 'json:{"driver":"qcow2","file":{"driver":"file","filename":"q.qcow2"}}';
  const jr = jsonRaw("r.raw");
  const off = jsonRaw("r.raw", '"offset":512,');
  const zeros = 'json:{"driver":"null-co","size":1048576,"read-zeroes":true}';
  const out: string[][] = [];
  for (const name of [jq, jr, off, zeros, 'json:{"file":{"driver":"file","filename":"q.qcow2"}}']) {
    out.push(
      ["info", name],
      ["info", "--output=json", name],
      ["map", name],
      ["map", "--output=json", name],
      ["compare", name, "r.raw"],
    );
  }
  for (const image of ["j.qcow2", "jr.qcow2"]) {
    out.push(
      ["info", image],
      ["info", "--output=json", image],
      ["info", "--backing-chain", image],
      ["info", "--backing-chain", "--output=json", image],
      ["map", image],
      ["map", "--output=json", image],
      ["check", image],
      ["compare", image, "jb.raw"],
      ["compare", image, "r.raw"],
    );
  }
  out.push(
    ["check", jq],
    ["check", "--output=json", jq],
    ["check", jr],
    ["info", "-f", "raw", jq],
    ["info", "-f", "qcow2", jr],
    ["info", 'json:{"driver":"null-co"}'],
    ["info", 'json:{"driver":"null-co","size":"1M"}'],
    ["info", "json:{'driver':'null-co','size':1048576}"],
    ["info", 'json:{"driver":"null-co","latency-ns":5}'],
    ["info", 'json:{"driver":"raw","file.filename":"r.raw"}'],
    ["info", 'json:{"driver":"raw","file":{"driver":"raw","file":{"filename":"r.raw"}}}'],
    ["info", 'json:{"driver":"qcow2","l2-cache-size":"1M","file":{"filename":"t.qcow2"}}'],
    ["info", 'json:{"driver":"raw","file":"nonexist"}'],
    ["info", 'json:{"driver":"raw","bogus":1,"file":{"filename":"r.raw"}}'],
    ["info", 'json:{"driver":"nosuch"}'],
    ["info", 'json:{"driver":"raw","file":{"driver":"file","filename":"nonexist"}}'],
    // Quoted as QEMU's JSON writer quotes: non-ASCII as \uXXXX.
    ["info", "--image-opts", "driver=raw,offset=0,file.filename=\u00e9.raw"],
    ["info", "--output=json", "--image-opts", "driver=raw,offset=0,file.filename=\u00e9.raw"],
    ["info", "--output=json", "\u00e9.raw"],
    // Bad JSON, in qemu-img's words.
    ["info", "json:{"],
    ["info", "json:"],
    ["info", "json:[]"],
    ["info", 'json:"x"'],
    ["info", "json:{}"],
    ["info", 'json:{"filename":"r.raw"}'],
    ["info", `${jr} x`],
    ["info", 'json:{"a":1,"a":2}'],
    ["info", 'json:{"a":01}'],
    ["info", "json:{a:1}"],
    ["info", 'json:{"a":"\q"}'],
    ["map", "json:{"],
    ["check", "json:[]"],
    ["compare", "r.raw", "json:{"],
    // Options no plain filename says: QEMU makes json:{...} of them, in its key order.
    ["info", "--image-opts", "driver=null-co,size=1M"],
    ["info", "--output=json", "--image-opts", "driver=null-co,size=1M"],
    ["info", "--image-opts", "driver=null-co,read-zeroes=on"],
    ["info", "--image-opts", "driver=null-co,latency-ns=5"],
    ["info", "--image-opts", "driver=raw,file.driver=null-co,file.size=1M"],
    ["info", "--output=json", "--image-opts", "driver=raw,file.driver=null-co,file.size=1M"],
    ["info", "--image-opts", "driver=raw,file.driver=null-co"],
    ["info", "--image-opts", "driver=raw,offset=512,size=1024,file.filename=r.raw"],
    ["info", "--image-opts", "driver=raw,file.filename=r.raw,file.locking=off"],
    ["info", "--image-opts", "driver=qcow2,l2-cache-size=1M,discard=unmap,file.filename=q.qcow2"],
    ["info", "--image-opts", "driver=qcow2,read-only=on,file.filename=t.qcow2"],
    ["map", "--image-opts", "driver=raw,offset=512,file.filename=r.raw"],
    // json: names as -b, as the target of convert -n, as commit's base.
    ["create", "-f", "qcow2", "-b", jsonRaw("jb.raw"), "-F", "raw", "x.qcow2"],
    ["create", "-f", "qcow2", "-b", "json:{", "-F", "raw", "x.qcow2"],
    ["create", "-f", "qcow2", "-u", "-b", jsonRaw("nonexist"), "-F", "raw", "x.qcow2", "1M"],
    ["convert", "-n", "q.qcow2", jr],
    ["commit", "-b", jsonRaw("jb.raw"), "jr.qcow2"],
    ["rebase", "-u", "-b", jq, "-F", "qcow2", "jr.qcow2"],
  );
  return out;
}

/**
 * Makes the two outputs comparable: the version banner (qemu-img's two lines, our one) and
 * the list of formats each tool has; QEMU's generated node names; the program name.
 */
function normalise(r: PeerResult): PeerResult {
  const text = (s: string) =>
    s.replace(/^qemu-img version .*\nCopyright .*\n/m, "<version>\n")
      .replace(/^blockgraph img version .*\n/m, "<version>\n")
      .replace(/^Supported formats:.*$/m, "Supported formats: <formats>")
      .replace(/#block\d+/g, "#blockN")
      .replace(/^blockgraph img: /gm, "qemu-img: ");
  return { code: r.code, out: text(r.out), err: text(r.err) };
}

/*
 * Known differences, left out of the cases:
 * - `create -f qcow2 -o encrypt.format=aes,encrypt.key-secret=ID`: qemu-img creates an image
 *   with the old AES method; blockgraph refuses to (it reads and converts such images). LUKS
 *   images are created and checked against qemu-img in `interop_qcow2_encrypted_test.ts`.
 * - `convert -O qcow2 -o compat=0.9`: the qcow2 driver says "Invalid parameter '0.9'" where
 *   QEMU says "Parameter 'version' does not accept value '0.9'".
 * - `create x.raw -1M`: glibc names the word before a bad clustered option ('x.raw').
 * - `-T help` (QEMU's trace events), `--object` types qemu-img cannot create beyond the
 *   schema check, and `bench -d 0` (qemu-img spins forever).
 */

const SUBCOMMANDS = [
  "amend",
  "bench",
  "bitmap",
  "check",
  "commit",
  "compare",
  "convert",
  "create",
  "dd",
  "info",
  "map",
  "measure",
  "rebase",
  "resize",
  "snapshot",
];

/** Each subcommand's arguments that make a valid run on the images (before the file names). */
const VALID: Record<string, string[]> = {
  amend: ["-o", "lazy_refcounts=on", "q.qcow2"],
  bitmap: ["--add", "q.qcow2", "b0"],
  check: ["q.qcow2"],
  commit: ["t.qcow2"],
  compare: ["q.qcow2", "t.qcow2"],
  convert: ["-O", "raw", "q.qcow2", "o.raw"],
  create: ["-f", "qcow2", "n.qcow2", "1M"],
  dd: ["if=r.raw", "of=o.raw"],
  info: ["q.qcow2"],
  map: ["q.qcow2"],
  measure: ["-O", "qcow2", "q.qcow2"],
  rebase: ["-u", "-b", "", "t.qcow2"],
  resize: ["r.raw", "2M"],
  snapshot: ["-l", "s.qcow2"],
};

const OBJECT_SUBCOMMANDS = Object.keys(VALID);

function cases(): string[][] {
  const out: string[][] = [
    [],
    ["-h"],
    ["--help"],
    ["--he"],
    ["-V"],
    ["--version"],
    ["-V", "info"],
    ["-h", "create"],
    ["bogus"],
    ["--bogus"],
    ["-x"],
    ["-T"],
    ["info", "-T"],
  ];
  for (const sub of SUBCOMMANDS) {
    out.push(
      [sub],
      [sub, "-h"],
      [sub, "--help"],
      [sub, "--hel"],
      [sub, "--help=1"],
      [sub, "--bogus"],
      [sub, "-Z"],
      [sub, "-h", "--bogus"],
      [sub, "--bogus", "-h"],
      [sub, "nonexist"],
      [sub, "--help", "q.qcow2", "1M"],
      [sub, "--object"],
      [sub, "--object", "bogus,id=o", "-h"],
    );
  }
  for (const sub of OBJECT_SUBCOMMANDS) {
    const valid = VALID[sub]!;
    out.push(
      [sub, "--object", "secret,id=s0,data=x", ...valid],
      [sub, "--object", "bogus,id=o", ...valid],
      [sub, "--object", "secret,data=x", ...valid],
      [sub, "--object", "secret,id=s0", ...valid],
      [sub, "--object", "secret,id=s0,data=x,bad=1", ...valid],
      [sub, "--object", "id=s0", ...valid],
      [sub, "--object", "help", ...valid],
      [sub, "--object", "secret,help", ...valid],
      [sub, "--object", "secret,id=s0,data=x", "--object", "secret,id=s0,data=y", ...valid],
      [sub, "--object", "authz-simple,id=a0", ...valid],
    );
  }
  out.push(...encryptionCases(), ...imageOptsCases());
  // -o help and option lists.
  for (const sub of ["create", "convert"]) {
    const fmtFlag = sub === "create" ? "-f" : "-O";
    for (const help of ["help", "?", "cluster_size=4k,help", "help,cluster_size=4k"]) {
      out.push(
        [sub, "-o", help],
        [sub, fmtFlag, "qcow2", "-o", help],
        [sub, fmtFlag, "raw", "-o", help],
        [sub, fmtFlag, "qcow2", "-o", help, "x.qcow2"],
        [sub, fmtFlag, "raw", "-o", help, "x.raw"],
      );
    }
    out.push(
      [sub, fmtFlag, "qcow2", "-o", "cluster_size=4k", "-o", "help"],
      [sub, fmtFlag, "qcow2", "-o", "help=1", "q.qcow2", "x.qcow2"],
      [sub, fmtFlag, "qcow2", "-o", "help", "r.raw", "x.qcow2"],
      [sub, fmtFlag, "bogus", "-o", "help"],
      [sub, fmtFlag, "null-co", "-o", "help"],
      [sub, fmtFlag, "file", "-o", "help"],
      [sub, fmtFlag, "qcow2", "-o", ""],
      [sub, fmtFlag, "qcow2", "-o", ",cluster_size=4k", "x.qcow2", "1M"],
      [sub, fmtFlag, "qcow2", "-o", "cluster_size=4k,", "x.qcow2", "1M"],
      [sub, fmtFlag, "qcow2", "-o", "cluster_size=4k,,", "x.qcow2", "1M"],
      [sub, fmtFlag, "qcow2", "-o", "bogus=1", "r.raw", "x.qcow2"],
      [sub, fmtFlag, "qcow2", "-o", "cluster_size=1x", "r.raw", "x.qcow2"],
      [sub, fmtFlag, "qcow2", "-o", "lazy_refcounts=maybe", "r.raw", "x.qcow2"],
      [sub, fmtFlag, "qcow2", "-o", "refcount_bits=x", "r.raw", "x.qcow2"],
      [sub, fmtFlag, "qcow2", "-o", "lazy_refcounts", "r.raw", "x.qcow2"],
      [sub, fmtFlag, "qcow2", "-o", "cluster_size=4k", "-o", "cluster_size=8k", "r.raw", "x.qcow2"],
      [sub, fmtFlag, "raw", "-o", "cluster_size=4k", "r.raw", "x.raw"],
      [sub, fmtFlag, "raw", "-o", "preallocation=bogus", "r.raw", "x.raw"],
      [sub, fmtFlag, "bogus", "r.raw", "x.raw"],
    );
  }
  out.push(
    ["amend", "-o", "help"],
    ["amend", "-o", "?"],
    ["amend", "-f", "qcow2", "-o", "help"],
    ["amend", "-f", "raw", "-o", "help"],
    ["amend", "-o", "help", "q.qcow2"],
    ["amend", "-o", "backing_file=r.raw", "q.qcow2"],
    ["amend", "-o", "backing_fmt=raw", "t.qcow2"],
    ["amend", "-o", "backing_file=q.qcow2,backing_fmt=qcow2", "t.qcow2"],
    ["amend", "-o", "backing_file=", "t.qcow2"],
    ["amend", "-f", "raw", "-o", "help", "r.raw"],
    ["amend", "-o", "help", "r.raw"],
    ["amend", "-f", "bogus", "-o", "help", "q.qcow2"],
    ["amend", "-o", "help", "nonexist"],
    ["amend", "-o", "", "q.qcow2"],
    ["amend", "-o", ",x", "q.qcow2"],
    ["amend", "-o", "bogus=1", "q.qcow2"],
    ["amend", "-o", "compat=0.9", "q.qcow2"],
    ["amend", "-o", "encrypt.format=luks", "q.qcow2"],
    ["amend", "-o", "encryption=on", "q.qcow2"],
    ["amend", "-o", "encrypt.state=active,lazy_refcounts=on", "q.qcow2"],
    ["amend", "-o", "lazy_refcounts=on,encrypt.cipher-alg=aes-128", "q.qcow2"],
    ["amend", "q.qcow2"],
    ["amend", "-o", "lazy_refcounts=on"],
    ["amend", "-o", "lazy_refcounts=on", "q.qcow2", "r.raw"],
    ["amend", "-f", "raw", "-o", "size=2M", "r.raw"],
    ["measure", "-O", "qcow2", "-o", "help", "--size", "1M"],
    ["measure", "-O", "qcow2", "-o", "", "--size", "1M"],
    ["measure", "-O", "qcow2", "-o", "bogus=1", "--size", "1M"],
  );
  // Sizes.
  for (const size of ["1Q", "-1", "1.5", "1.5k", "0x10", "0x10k", "8E", "16E", "1e3", ""]) {
    out.push(["create", "-f", "raw", "x.raw", size]);
  }
  for (const size of ["1Q", "+1Q", "-1Q", "0", "-2M", "+0", "8E", "--1M", "1.5"]) {
    out.push(["resize", "-f", "raw", "r.raw", size]);
  }
  out.push(
    ["resize", "q.qcow2"],
    ["resize", "q.qcow2", "-1M"],
    ["resize", "--shrink", "q.qcow2", "512k"],
    ["resize", "--preallocation=bogus", "r.raw", "2M"],
    ["resize", "--preallocation=full", "q.qcow2", "2M"],
    ["resize", "-f", "qcow2", "r.raw", "2M"],
    ["resize", "nonexist", "2M"],
    ["measure", "--size", "1Q", "-O", "qcow2"],
    ["measure", "--size", "-1", "-O", "qcow2"],
    ["measure", "--size", "1M"],
    ["measure", "--size", "1M", "-O", "bogus"],
    ["measure", "--size", "1M", "q.qcow2"],
    ["measure", "q.qcow2", "r.raw"],
    ["measure", "-O", "qcow2", "nonexist"],
    ["measure", "--output=xml", "--size", "1M"],
    ["bench", "-c", "1Q", "q.qcow2"],
    // (qemu-img bench -d 0 spins forever: not a case.)
    ["bench", "-s", "-1", "q.qcow2"],
    ["bench", "-c", "1", "nonexist"],
    ["bench", "-c", "1", "-f", "qcow2", "r.raw"],
    ["bitmap", "--add", "-g", "1Q", "q.qcow2", "b"],
    ["convert", "-S", "1Q", "r.raw", "o.raw"],
    ["convert", "-S", "-1", "r.raw", "o.raw"],
    ["convert", "-m", "0", "r.raw", "o.raw"],
    ["convert", "-r", "1Q", "r.raw", "o.raw"],
    ["convert", "r.raw"],
    ["convert", "nonexist", "o.raw"],
    ["convert", "-f", "qcow2", "r.raw", "o.raw"],
    ["convert", "-O", "bogus", "r.raw", "o.raw"],
    ["convert", "-f", "bogus", "r.raw", "o.raw"],
    ["convert", "-t", "bogus", "r.raw", "o.raw"],
    ["convert", "-T", "bogus", "r.raw", "o.raw"],
    ["convert", "-c", "-O", "raw", "r.raw", "o.raw"],
    ["convert", "-B", "q.qcow2", "-O", "raw", "r.raw", "o.raw"],
    ["convert", "-n", "-o", "cluster_size=4k", "r.raw", "o.raw"],
    ["convert", "-O", "qcow2", "-B", "q.qcow2", "r.raw", "x.qcow2"],
    ["convert", "-O", "qcow2", "-o", "backing_file=q.qcow2", "r.raw", "x.qcow2"],
    ["convert", "-O", "qcow2", "-B", "q.qcow2", "-F", "qcow2", "r.raw", "r.raw", "x.qcow2"],
    ["convert", "-O", "qcow2", "-B", "q.qcow2", "r.raw", "r.raw", "x.qcow2"],
    ["convert", "-c", "-O", "raw", "-B", "q.qcow2", "r.raw", "x.raw"],
    ["commit", "-r", "1Q", "t.qcow2"],
    ["commit", "-r", "-1", "t.qcow2"],
    ["commit", "-b", "nonexist", "t.qcow2"],
    ["commit", "q.qcow2"],
    ["commit", "-f", "raw", "nonexist"],
    ["commit", "t.qcow2", "q.qcow2"],
    ["commit", "-t", "bogus", "t.qcow2"],
    ["create"],
    ["create", "-f", "qcow2"],
    ["create", "-f", "bogus", "x.img", "1M"],
    ["create", "-f", "qcow2", "x.qcow2"],
    ["create", "-f", "raw", "x.raw"],
    ["create", "-f", "raw", "x.raw", "1M", "extra"],
    ["create", "-f", "null-co", "x.img", "1M"],
    ["create", "-f", "file", "x.img", "1M"],
    ["create", "-f", "qcow2", "-b", "nonexist", "-F", "qcow2", "x.qcow2"],
    ["create", "-f", "qcow2", "-b", "q.qcow2", "x.qcow2"],
    ["create", "-f", "qcow2", "-b", "r.raw", "-F", "qcow2", "x.qcow2"],
    ["create", "-f", "qcow2", "-F", "qcow2", "x.qcow2", "1M"],
    ["create", "-f", "raw", "-b", "q.qcow2", "-F", "qcow2", "x.raw", "1M"],
    ["create", "-f", "qcow2", "-u", "-b", "nonexist", "-F", "qcow2", "x.qcow2"],
    ["create", "-f", "qcow2", "-u", "-b", "nonexist", "-F", "qcow2", "x.qcow2", "1M"],
    ["create", "-q", "-f", "raw", "nodir/x.raw", "1M"],
    ["create", "-f", "raw", "-o", "size=1M", "x.raw", "1M"],
    ["create", "-f", "raw", "-o", "size=1M", "x.raw"],
    ["create", "-f", "qcow2", "-o", "preallocation=bogus", "x.qcow2", "1M"],
    ["create", "-f", "qcow2", "-o", "cluster_size=3k", "x.qcow2", "1M"],
    ["create", "-f", "qcow2", "-o", "refcount_bits=3", "x.qcow2", "1M"],
    ["create", "-f", "qcow2", "-o", "compat=0.10,extended_l2=on", "x.qcow2", "1M"],
    ["create", "-f", "qcow2", "-o", "compression_type=lzo", "x.qcow2", "1M"],
    ["create", "-f", "qcow2", "-o", "data_file_raw=on", "x.qcow2", "1M"],
    ["check", "-f", "qcow2", "r.raw"],
    ["check", "-f", "raw", "q.qcow2"],
    ["check", "-f", "bogus", "q.qcow2"],
    ["check", "-r", "bogus", "q.qcow2"],
    ["check", "--output=xml", "q.qcow2"],
    ["check", "-T", "bogus", "q.qcow2"],
    ["check", "q.qcow2", "r.raw"],
    ["check", "--image-opts", "-f", "qcow2", "q.qcow2"],
    ["check", "--image-opts", "driver=qcow2,file.filename=q.qcow2"],
    ["check", "--image-opts", "driver=qcow2"],
    ["check", "--image-opts", "bogus=1,driver=qcow2,file.filename=q.qcow2"],
    ["compare", "q.qcow2"],
    ["compare", "q.qcow2", "nonexist"],
    ["compare", "-f", "raw", "-F", "qcow2", "r.raw", "q.qcow2"],
    ["compare", "-f", "qcow2", "r.raw", "q.qcow2"],
    ["compare", "-F", "bogus", "r.raw", "q.qcow2"],
    ["compare", "q.qcow2", "r.raw", "t.qcow2"],
    ["compare", "-T", "bogus", "q.qcow2", "r.raw"],
    ["dd", "if=r.raw"],
    ["dd", "of=o.raw"],
    ["dd", "if=nonexist", "of=o.raw"],
    ["dd", "bs=0", "if=r.raw", "of=o.raw"],
    ["dd", "bs=1Q", "if=r.raw", "of=o.raw"],
    ["dd", "count=-1", "if=r.raw", "of=o.raw"],
    ["dd", "skip=x", "if=r.raw", "of=o.raw"],
    ["dd", "bogus", "if=r.raw", "of=o.raw"],
    ["dd", "-O", "bogus", "if=r.raw", "of=o.raw"],
    ["dd", "-f", "qcow2", "if=r.raw", "of=o.raw"],
    ["dd", "if=r.raw", "of=r.raw"],
    ["dd", "bs=1M", "skip=10", "if=r.raw", "of=o.raw"],
    ["dd", "bs=4k", "skip=300", "count=1", "if=r.raw", "of=o.raw"],
    ["dd", "if=r.raw", "of="],
    ["info", "-f", "qcow2", "r.raw"],
    ["info", "-f", "bogus", "q.qcow2"],
    ["info", "--output=xml", "q.qcow2"],
    ["info", "q.qcow2", "r.raw"],
    ["info", "nodir/x"],
    ["info", ""],
    ["info", "--image-opts", "driver=raw,file.filename=nonexist"],
    ["map", "-f", "qcow2", "r.raw"],
    ["map", "--start-offset=1Q", "q.qcow2"],
    ["map", "--start-offset=-1", "q.qcow2"],
    ["map", "--max-length=1Q", "q.qcow2"],
    ["map", "--output=xml", "q.qcow2"],
    ["map", "q.qcow2", "r.raw"],
    ["rebase", "q.qcow2"],
    ["rebase", "-b", "r.raw", "q.qcow2"],
    ["rebase", "-b", "nonexist", "-F", "raw", "t.qcow2"],
    ["rebase", "-b", "r.raw", "-F", "raw", "nonexist"],
    ["rebase", "-f", "raw", "-b", "r.raw", "-F", "raw", "t.qcow2"],
    ["rebase", "-t", "bogus", "-b", "r.raw", "-F", "raw", "t.qcow2"],
    ["rebase", "-b", "r.raw", "-F", "raw", "t.qcow2", "q.qcow2"],
    // The new backing file is opened without sharing writes (unless -U): the image itself is
    // refused for its lock.
    ["rebase", "-b", "t.qcow2", "-F", "qcow2", "t.qcow2"],
    ["rebase", "-b", "q.qcow2", "q.qcow2"],
    ["rebase", "-U", "-b", "q.qcow2", "-F", "qcow2", "t.qcow2"],
    ["snapshot", "q.qcow2"],
    ["snapshot", "-l", "-c", "x", "q.qcow2"],
    ["snapshot", "-a", "nosuch", "s.qcow2"],
    ["snapshot", "-c", "s1", "s.qcow2"],
    ["snapshot", "-l", "r.raw"],
    ["snapshot", "-c", "x", "-f", "raw", "r.raw"],
    ["snapshot", "-l", "nonexist"],
    ["snapshot", "-l", "q.qcow2", "r.raw"],
    ["snapshot", "-c"],
    ["info", "."],
    ["info", "o.qcow2"],
    ["info", "--backing-chain", "o.qcow2"],
    ["check", "o.qcow2"],
    ["map", "o.qcow2"],
    ["convert", "o.qcow2", "x.raw"],
    ["commit", "o.qcow2"],
    ["compare", "o.qcow2", "r.raw"],
    ["rebase", "-b", "r.raw", "-F", "raw", "o.qcow2"],
    ["convert", "-O", "qcow2", "r.raw", "nodir/x.qcow2"],
    ["create", "-f", "qcow2", "nodir/x.qcow2", "1M"],
    ["resize", "r.raw", "512k"],
    ["resize", "--shrink", "r.raw", "512k"],
    // Lengths in whole 512-byte sectors, as QEMU's: a 196616-byte qcow2 file read as raw is
    // 197120 bytes; qcow2 sizes round up at create and must be whole sectors at resize.
    ["info", "-f", "raw", "q.qcow2"],
    ["info", "--output=json", "-f", "raw", "q.qcow2"],
    ["map", "-f", "raw", "q.qcow2"],
    ["map", "--output=json", "-f", "raw", "q.qcow2"],
    ["create", "-f", "qcow2", "-b", "q.qcow2", "-F", "raw", "b.qcow2"],
    ["create", "-f", "qcow2", "odd.qcow2", "1000"],
    ["resize", "q.qcow2", "1500"],
    ["resize", "r.raw", "1500"],
    ["check", "-r", "all", "r.raw"],
    ["compare", "-s", "q.qcow2", "r.raw"],
    ["convert", "-n", "r.raw", "nonexist.raw"],
    ["snapshot", "-c", "s", "-l", "q.qcow2"],
    ["info", "--output", "json", "nonexist"],
    ["map", "--output=json", "nonexist"],
    ["check", "-q", "nonexist"],
    ["bitmap", "--add", "-f", "bogus", "q.qcow2", "b"],
    ["create", "-f", "qcow2", "-o", "backing_file=q.qcow2,backing_fmt=qcow2", "x.qcow2"],
    ["create", "-f", "qcow2", "-o", "backing_fmt=qcow2", "x.qcow2", "1M"],
    ["create", "-f", "raw", "-F", "qcow2", "x.raw", "1M"],
    ["create", "-f", "qcow2", "-b", "x.qcow2", "-F", "qcow2", "x.qcow2"],
    ["create", "-f", "qcow2", "-b", "", "-F", "qcow2", "x.qcow2", "1M"],
    ["create", "-f", "qcow2", "-o", "size=1M", "x.qcow2"],
    ["create", "-f", "qcow2", "-o", "size=1M", "x.qcow2", "2M"],
    ["create", "-f", "qcow2", "-o", "cluster_size=4k", "-o", "lazy_refcounts=on", "x.qcow2", "1M"],
    ["create", "-f", "qcow2", "-o", "lazy_refcounts=on,,x", "x.qcow2", "1M"],
    ["create", "-q", "-f", "qcow2", "-o", "compression_type=zstd", "x.qcow2", "1M"],
    ["create", "-f", "qcow2", "-o", "extended_l2=on,cluster_size=4k", "x.qcow2", "1M"],
    ["create", "-f", "qcow2", "-o", "data_file=d.raw,data_file_raw=on", "x.qcow2", "1M"],
    // compat=0.10 with what needs version 3: qcow2_co_create's order and words.
    ["create", "-f", "qcow2", "-o", "compat=0.10,lazy_refcounts=on", "x.qcow2", "1M"],
    ["create", "-f", "qcow2", "-o", "compat=0.10,refcount_bits=8", "x.qcow2", "1M"],
    ["create", "-f", "qcow2", "-o", "compat=0.10,compression_type=zstd", "x.qcow2", "1M"],
    ["create", "-f", "qcow2", "-o", "compat=0.10,compression_type=zlib", "x.qcow2", "1M"],
    [
      "create",
      "-f",
      "qcow2",
      "-o",
      "compat=0.10,refcount_bits=8,lazy_refcounts=on",
      "x.qcow2",
      "1M",
    ],
    ["create", "-f", "qcow2", "-o", "compat=0.10,data_file=d.raw,refcount_bits=8", "x.qcow2", "1M"],
    ["create", "-f", "qcow2", "-o", "cluster_size=3k,compat=0.10,extended_l2=on", "x.qcow2", "1M"],
    ["convert", "--target-image-opts", "-o", "help", "r.raw", "x"],
    // Progress steps over the data only, and 100% again at the end.
    ["convert", "-p", "-O", "qcow2", "j.qcow2", "x.qcow2"],
    ["convert", "-p", "-O", "raw", "jb.raw", "x.raw"],
    ["convert", "-p", "-O", "qcow2", "q.qcow2", "x.qcow2"],
    ["convert", "-O", "qcow2", "-o", "cluster_size=4k,,", "r.raw", "x.qcow2"],
    ["convert", "-O", "qcow2", "-o", "backing_fmt=qcow2", "r.raw", "x.qcow2"],
    ["amend", "-o", "size=2M", "q.qcow2"],
    ["amend", "-o", "cluster_size=4k", "q.qcow2"],
    ["amend", "-o", "lazy_refcounts=maybe", "q.qcow2"],
    ["amend", "-o", "compat=0.10", "-o", "lazy_refcounts=on", "q.qcow2"],
    // -p: qemu-img's progress line on standard output, terminal or not.
    ["amend", "-p", "-o", "compat=0.10", "q.qcow2"],
    ["amend", "-p", "-o", "compat=0.10", "s.qcow2"],
    ["amend", "-p", "-o", "compat=1.1", "v2.qcow2"],
    ["amend", "-p", "-o", "lazy_refcounts=on", "q.qcow2"],
    ["amend", "-p", "-q", "-o", "compat=0.10", "q.qcow2"],
    ["amend", "-p", "-o", "bogus=1", "q.qcow2"],
    ["amend", "-p", "-o", "help", "q.qcow2"],
    ["amend", "-p", "-o", "encrypt.state=active", "q.qcow2"],
    ["amend", "-p", "-o", "compat=0.10", "nonexist.qcow2"],
    ["dd", "-O", "null-co", "if=r.raw", "of=o.raw"],
    ["measure", "-O", "file", "--size", "1M"],
    ["measure", "-f", "raw", "--size", "1M"],
    ["measure", "-O", "qcow2", "-o", "cluster_size=4k,help", "--size", "1M"],
    ["measure", "-O", "qcow2", "-o", "cluster_size=4k", "--size", "1M"],
    ["measure", "--output=json", "-O", "qcow2", "-o", "preallocation=full", "--size", "1M"],
  );
  out.push(...jsonCases());
  return out;
}

/** The names, sizes and modification times in `dir`: what a case could have changed. */
async function listing(dir: string): Promise<string> {
  const out: string[] = [];
  for await (const e of Deno.readDir(dir)) {
    const st = await Deno.stat(`${dir}/${e.name}`);
    out.push(`${e.name} ${st.size} ${st.mtime?.getTime()}`);
  }
  return out.sort().join("\n");
}

Deno.test("img's help, --object, -o help and error paths answer as qemu-img's", async () => {
  await ensurePeers(["qemu-img"]);
  const src = await Deno.makeTempDir();
  const a = await Deno.makeTempDir();
  const b = await Deno.makeTempDir();
  const mismatches: unknown[] = [];
  try {
    await makeImages(src);
    const all = cases();
    const pristine = await listing(src);
    for (const args of all) {
      // Most cases change nothing: copy the images afresh only where the last case did.
      for (const d of [a, b]) {
        if (await listing(d) === pristine) continue;
        await runPeer("find", [d, "-mindepth", "1", "-delete"], { cwd: d });
        await runPeer("cp", ["-a", `${src}/.`, d], { cwd: src });
      }
      if (Deno.env.get("IMG_CLI_TRACE")) console.error(JSON.stringify(args));
      const theirs = normalise(await runPeer("qemu-img", args, { cwd: a }));
      const mine = normalise(await runOurImg(args, b));
      try {
        assertEquals(mine, theirs);
      } catch {
        mismatches.push({ args, mine, theirs });
      }
    }
    if (Deno.env.get("IMG_CLI_REPORT")) {
      await Deno.writeTextFile(
        Deno.env.get("IMG_CLI_REPORT")!,
        JSON.stringify({ total: all.length, mismatches }, null, 1),
      );
    }
    assertEquals(mismatches, []);
  } finally {
    for (const d of [src, a, b]) await Deno.remove(d, { recursive: true });
  }
});
