/**
 * Cases of the qemu-img CLI interop test (`interop_qemu_img_cli_test.ts`) for option
 * strings: qcow2's encryption options in `create`, `convert` and `measure`, and
 * `--image-opts` strings (`info`, `dd`). Each is run by qemu-img and by us in copies of the
 * same folder of small images (`q.qcow2`, `r.raw`, ...).
 *
 * @module
 */

/** qcow2's encryption options (`create_encryption.ts`). */
export function encryptionCases(): string[][] {
  const out: string[][] = [];
  // qcow2's encryption options, checked as qemu-img checks them (`create_encryption.ts`);
  // left out: the lists with which qemu-img goes on to encrypt (a key secret that exists and
  // options it takes): images made so are checked in `interop_qcow2_encrypted_test.ts`.
  for (
    const o of [
      "encrypt.format=aes",
      "encryption=on",
      "encryption=off",
      "encryption=bogus",
      "encrypt.format=luks",
      "encrypt.format=qcow",
      "encrypt.format=bogus",
      "encrypt.format=",
      "encrypt.format=aes,encrypt.key-secret=sec0",
      "encrypt.format=luks,encrypt.key-secret=sec0",
      "encrypt.key-secret=sec0",
      "encrypt.cipher-alg=aes-128",
      "encrypt.format=aes,encrypt.cipher-alg=aes-128",
      "encrypt.format=aes,encrypt.iter-time=10",
      "encrypt.format=luks,encrypt.cipher-alg=bogus",
      "encrypt.format=luks,encrypt.cipher-mode=bogus",
      "encrypt.format=luks,encrypt.ivgen-alg=bogus",
      "encrypt.format=luks,encrypt.hash-alg=sha3",
      "encrypt.format=luks,encrypt.iter-time=abc",
      "encryption=on,encrypt.format=luks",
      "encryption=off,encrypt.format=luks",
      "compat=0.10,encrypt.format=luks",
      "compat=0.10,lazy_refcounts=on,encrypt.format=aes",
      "encrypt.format=aes,lazy_refcounts=on,cluster_size=3k",
    ]
  ) out.push(["create", "-f", "qcow2", "-o", o, "x.qcow2", "1M"]);
  const withObject = (
    object: string,
    o: string,
  ) => ["create", "--object", object, "-f", "qcow2", "-o", o, "x.qcow2", "1M"];
  out.push(
    withObject("secret,id=s1,data=x", "encrypt.format=luks,encrypt.key-secret=s0"),
    withObject("authz-simple,id=a0,identity=x", "encrypt.format=aes,encrypt.key-secret=a0"),
    ["create", "-f", "raw", "-o", "encryption=on", "x.raw", "1M"],
    ["convert", "-O", "qcow2", "-o", "encrypt.format=luks", "r.raw", "x.qcow2"],
    ["convert", "-O", "qcow2", "-o", "encryption=off", "r.raw", "x.qcow2"],
  );
  // measure's encryption options: only a LUKS header counts. The LUKS sizes themselves are in
  // create_encryption_test.ts: qemu-img 7.2 sets up real LUKS crypto to get them, which fails
  // on some runs ("Unable to get accurate CPU usage").
  for (
    const o of [
      "encryption=bogus",
      "encrypt.iter-time=abc",
      "encrypt.format=luks,encrypt.cipher-alg=bogus",
      "encrypt.format=aes,encrypt.cipher-alg=bogus",
      "encrypt.format=luks,encrypt.key-secret=nosuch",
      "encrypt.format=bogus",
      "encrypt.key-secret=s0",
      "encryption=on,encrypt.format=luks",
      "encryption=off",
    ]
  ) out.push(["measure", "-O", "qcow2", "--size", "1G", "-o", o]);
  out.push(
    ["measure", "-O", "raw", "--size", "1G", "-o", "encryption=off"],
    [
      "measure",
      "--object",
      "authz-simple,id=a0,identity=x",
      "-O",
      "qcow2",
      "-o",
      "encrypt.format=luks,encrypt.key-secret=a0",
      "q.qcow2",
    ],
    [
      "measure",
      "--object",
      "secret,id=s0,data=x",
      "-O",
      "qcow2",
      "--size",
      "1G",
      "-o",
      "encrypt.format=luks,encrypt.key-secret=s0,encrypt.cipher-alg=des",
    ],
  );
  return out;
}

/** `--image-opts` strings. */
export function imageOptsCases(): string[][] {
  const out: string[][] = [];
  // --image-opts strings: a first element without '=' is the implied `file` (a node reference
  // when it is a string), later ones short-form booleans with QEMU's warning, and an unknown
  // nested option is named by its flattened key.
  for (
    const o of [
      "r.raw",
      "r.raw,driver=raw",
      "file=r.raw",
      "r.raw,,x",
      "foo=bar",
      "driver=raw,file.filename=r.raw,r.raw",
      "driver=raw,file.filename=r.raw,noflag",
      "driver=raw,file.filename=r.raw,a.b.c=1",
    ]
  ) out.push(["info", "--image-opts", o]);
  // dd's --image-opts names the input by its options; the output stays a filename.
  const ddIn = "if=driver=raw,file.filename=r.raw";
  out.push(
    ["dd", "--image-opts", ddIn, "of=x.raw", "bs=64k", "count=2"],
    ["dd", "--image-opts", "-f", "raw", ddIn, "of=x.raw"],
    ["dd", "--image-opts", "if=r.raw", "of=x.raw"],
    ["dd", "--image-opts", "if=driver=qcow2,file.filename=r.raw", "of=x.raw"],
    ["dd", "--image-opts", "-O", "qcow2", "if=driver=qcow2,file.filename=q.qcow2", "of=x.qcow2"],
    ["dd", "--image-opts", "-U", ddIn, "of=x.raw", "bs=4k", "skip=2"],
  );
  return out;
}
