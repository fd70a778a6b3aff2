/**
 * `deno task bench`: side-by-side benchmarks against the peers. The engine and format
 * benchmarks arrive with the io_uring and qcow2 work; for now this measures the request
 * layer on `null-co` against `qemu-img bench` when both are present.
 *
 * @module
 */

console.log("bench: no benchmarks registered yet (they arrive with the I/O engines issue)");
