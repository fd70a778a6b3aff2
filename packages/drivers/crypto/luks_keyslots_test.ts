import { deepStrictEqual as assertEquals, rejects as assertRejects } from "node:assert";
import { createLuks } from "./luks_create.ts";
import { parseLuksHeader } from "./luks_header.ts";
import { changeKeyslots, type KeyslotChange } from "./luks_keyslots.ts";
import { unlockLuks } from "./luks_unlock.ts";

const enc = (s: string) => new TextEncoder().encode(s);
const PASSWORDS: Record<string, string> = { s0: "zero", s1: "one", s2: "two" };

/** A new volume in memory (password "zero") and a function that changes its key slots. */
async function volume() {
  const { region } = await createLuks({ iterTime: 5 }, enc("zero"));
  const read = (at: number, n: number) => Promise.resolve(region.slice(at, at + n));
  const { masterKey } = await unlockLuks(parseLuksHeader(region), enc("zero"), read);
  const change = (c: KeyslotChange, force = false) =>
    changeKeyslots(
      {
        header: parseLuksHeader(region),
        masterKey,
        read,
        write: (at, data) => Promise.resolve(region.set(data, at)),
        flush: () => Promise.resolve(),
      },
      { iterTime: 5, ...c },
      force,
      (id) => Promise.resolve(enc(PASSWORDS[id]!)),
    );
  const active = () => parseLuksHeader(region).slots.map((s) => s.active);
  const opens = (password: string) =>
    unlockLuks(parseLuksHeader(region), enc(password), read).then(() => true, () => false);
  return { change, active, opens };
}

Deno.test("key slots: passwords are added to free slots and erased by password or index", async () => {
  const v = await volume();
  await v.change({ state: "active", newSecret: "s1" });
  await v.change({ state: "active", newSecret: "s2", keyslot: 5 });
  assertEquals(v.active(), [true, true, false, false, false, true, false, false]);
  assertEquals([await v.opens("zero"), await v.opens("one"), await v.opens("two")], [
    true,
    true,
    true,
  ]);
  await v.change({ state: "inactive", oldSecret: "s0" });
  await v.change({ state: "inactive", keyslot: 5 });
  assertEquals(v.active(), [false, true, false, false, false, false, false, false]);
  assertEquals([await v.opens("zero"), await v.opens("one"), await v.opens("two")], [
    false,
    true,
    false,
  ]);
  // --force erases the last one; nothing opens the volume any more.
  await v.change({ state: "inactive", keyslot: 1 }, true);
  assertEquals(await v.opens("one"), false);
});

Deno.test("key slots: QEMU's refusals, before anything changes", async () => {
  const v = await volume();
  const refused = async (c: KeyslotChange, message: string) => {
    await assertRejects(v.change(c), (e: Error) => e.message === message);
    assertEquals(v.active(), [true, false, false, false, false, false, false, false]);
  };
  await refused({ state: "active" }, "'new-secret' is required to activate a keyslot");
  await refused(
    { state: "active", newSecret: "s1", oldSecret: "s0" },
    "'old-secret' must not be given when activating keyslots",
  );
  await refused(
    { state: "active", newSecret: "s1", keyslot: 8 },
    "Invalid keyslot 8 specified, must be between 0 and 7",
  );
  await refused(
    { state: "active", newSecret: "s1", keyslot: 0 },
    "Refusing to overwrite active keyslot 0 - please erase it first",
  );
  await refused(
    { state: "inactive", newSecret: "s1" },
    "'new-secret' must not be given when erasing keyslots",
  );
  await refused({ state: "inactive", keyslot: 3 }, "Given keyslot 3 is already erased (inactive) ");
  await refused(
    { state: "inactive", keyslot: 0, oldSecret: "s1" },
    "Given keyslot 0 doesn't contain the given old password for erase operation",
  );
  await refused(
    { state: "inactive", keyslot: 0 },
    "Attempt to erase the only active keyslot 0 which will erase all the data in the image " +
      "irreversibly - refusing operation",
  );
  await refused(
    { state: "inactive", oldSecret: "s1" },
    "No keyslots match given (old) password for erase operation",
  );
  await refused(
    { state: "inactive", oldSecret: "s0" },
    "All the active keyslots match the (old) password that was given and erasing them will " +
      "erase all the data in the image irreversibly - refusing operation",
  );
  await refused(
    { state: "inactive" },
    "To erase keyslot(s), either explicit keyslot index or the password currently contained " +
      "in them must be given",
  );
  for (let i = 1; i < 8; i++) await v.change({ state: "active", newSecret: "s1" });
  await assertRejects(
    v.change({ state: "active", newSecret: "s2" }),
    /Can't add a keyslot - all keyslots are in use/,
  );
});
