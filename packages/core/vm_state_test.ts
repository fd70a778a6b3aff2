import { deepStrictEqual as assertEquals } from "node:assert";
import { type BlockDriver, DriverRegistry } from "./driver.ts";
import { BlockError } from "./errors.ts";
import { Graph } from "./graph.ts";
import { IoVector } from "./io_vector.ts";
import { assertRejects, testDrivers } from "./test_util.ts";
import { loadVmState, saveVmState } from "./vm_state.ts";

/** A protocol with a VM state area of its own, kept in memory. */
const withState: BlockDriver = {
  name: "with-state",
  kind: "protocol",
  options: {},
  open() {
    const state = new Uint8Array(4096);
    return Promise.resolve({
      limits: { requestAlignment: 1, maxTransfer: 0 },
      getLength: () => 1 << 20,
      preadv: () => Promise.resolve(),
      pwritev: () => Promise.resolve(),
      loadVmState(pos, bytes, qiov, qo) {
        qiov.copyFrom(qo, state, pos, bytes);
        return Promise.resolve();
      },
      saveVmState(pos, bytes, qiov, qo) {
        qiov.copyTo(qo, state, pos, bytes);
        return Promise.resolve();
      },
      close: () => Promise.resolve(),
    });
  },
};

Deno.test("VM state: filters pass it to the child that has an area; others answer ENOTSUP", async () => {
  const graph = new Graph({ registry: new DriverRegistry([...testDrivers, withState]) });
  const top = await graph.open({ driver: "pass", file: { driver: "with-state" } }, "t");
  const ram = await graph.open({ driver: "ram", size: 4096 }, "t");
  try {
    await saveVmState(top, 100, 3, IoVector.of(new Uint8Array([7, 8, 9])), 0);
    const back = new Uint8Array(5);
    await loadVmState(top, 99, 5, IoVector.of(back), 0);
    assertEquals([...back], [0, 7, 8, 9, 0]);
    assertEquals(top.inFlight, 0, "nothing left in flight");
    const buf = IoVector.of(new Uint8Array(1));
    const e1 = await assertRejects(() => loadVmState(ram, 0, 1, buf, 0), BlockError);
    const e2 = await assertRejects(() => saveVmState(ram, 0, 1, buf, 0), BlockError);
    assertEquals([e1.code, e2.code], ["ENOTSUP", "ENOTSUP"]);
  } finally {
    await top.unref("t");
    await ram.unref("t");
    await graph.closeAll();
  }
});
