/**
 * Fault injection for tests of the paths a bug would take (a programming error is not a full disk).
 *
 * Owns: `testFault(point)`: throws a TypeError at `point` when `MTA_TEST_FAULT` names it.
 * Invariant: unreachable in the product. build.ts defines `process.env.MTA_TEST_FAULT` as undefined
 * when it compiles dist/mta, so the comparison below is constant and the branch is dropped from the
 * executable (test/arch checks that the binary does not contain the variable's name). Only a run from
 * source (`bun src/cli/main.ts`, as tests do) can reach it.
 */

export function testFault(point: string): void {
  const fault = process.env.MTA_TEST_FAULT;
  if (fault !== undefined && fault === point) throw new TypeError(`injected test fault at ${point}`);
}
