/**
 * CPU time of finished child processes, from `getrusage(RUSAGE_CHILDREN)` through libc: the
 * user and system time of every child this process has waited for (and of their waited-for
 * descendants), in microseconds. Deno reaps each `Deno.Command` child when it exits, so the
 * difference across one `output()` call is the CPU time of that child alone, at microsecond
 * resolution, which `/proc/<pid>/stat` (10 ms ticks, gone once reaped) cannot give.
 *
 * @module
 */

const RUSAGE_CHILDREN = -1;

let lib:
  | Deno.DynamicLibrary<{ getrusage: { parameters: ["i32", "buffer"]; result: "i32" } }>
  | null = null;
/** struct rusage is 144 bytes on x86-64; ru_utime and ru_stime (two timevals) come first. */
const usage = new BigInt64Array(18);

/** User plus system CPU time of all reaped children so far, in microseconds. */
export function childrenCpuMicros(): number {
  lib ??= Deno.dlopen("libc.so.6", {
    getrusage: { parameters: ["i32", "buffer"], result: "i32" },
  });
  if (lib.symbols.getrusage(RUSAGE_CHILDREN, new Uint8Array(usage.buffer)) !== 0) {
    throw new Error("getrusage(RUSAGE_CHILDREN) failed");
  }
  return Number(usage[0]!) * 1e6 + Number(usage[1]!) + Number(usage[2]!) * 1e6 + Number(usage[3]!);
}
