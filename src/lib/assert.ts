/**
 * Invariant checks.
 *
 * Owns: `assert`, which throws `AssertionError` when an invariant is broken.
 * Invariant: a broken invariant crashes loudly; code never limps on over a spool.
 */

export class AssertionError extends Error {
  override name = "AssertionError";
}

export function assert(condition: unknown, message: string): asserts condition {
  if (!condition) throw new AssertionError(message);
}

export function unreachable(value: never, what = "value"): never {
  throw new AssertionError(`unexpected ${what}: ${String(value)}`);
}
