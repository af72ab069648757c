/**
 * Invariant checks.
 *
 * Owns: `assert`, which throws `AssertionError` when an invariant is broken.
 * Invariant: a broken invariant crashes loudly; code never limps on over a spool.
 */

export class AssertionError extends Error {
  override name = "AssertionError";
}

/**
 * Throws when `condition` is false. A message that needs building is passed as a function, so the
 * check costs nothing on hot paths while the invariant holds.
 */
export function assert(condition: unknown, message: string | (() => string)): asserts condition {
  if (!condition) throw new AssertionError(typeof message === "string" ? message : message());
}

export function unreachable(value: never, what = "value"): never {
  throw new AssertionError(`unexpected ${what}: ${String(value)}`);
}
