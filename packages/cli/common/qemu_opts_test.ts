import { deepStrictEqual as assertEquals } from "node:assert";
import { parseQemuOpts } from "./qemu_opts.ts";

Deno.test("parseQemuOpts splits at single commas and unescapes double ones", () => {
  assertEquals(parseQemuOpts("driver=raw,,x,file.filename=a").values, {
    driver: "raw,x",
    "file.filename": "a",
  });
});

Deno.test("parseQemuOpts takes short-form booleans with QEMU's warning", () => {
  const r = parseQemuOpts("a.img,noflag");
  assertEquals(r.values, { "a.img": "on", flag: "off" });
  assertEquals(
    r.warnings[0],
    "warning: short-form boolean option 'a.img' deprecated\nPlease use a.img=on instead",
  );
});
