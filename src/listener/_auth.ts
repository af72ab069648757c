/**
 * SASL for AUTH (RFC 4954): PLAIN (RFC 4616) and LOGIN, checked against `Bun.password` hashes.
 *
 * Owns: decoding the client's responses, verifying a username and password.
 * Invariant: plain-text passwords exist only in this function's locals; an unknown user costs the same
 * hash verification as a known one, so timing does not reveal which users exist.
 */

export type AuthMechanism = "PLAIN" | "LOGIN";
export const MECHANISMS: readonly AuthMechanism[] = ["PLAIN", "LOGIN"];

/** Base64 decode that refuses anything that is not canonical base64 (undefined). */
export function decodeBase64(text: string): string | undefined {
  const t = text.trim();
  if (t.length % 4 !== 0 || !/^[A-Za-z0-9+/]*={0,2}$/.test(t)) return undefined;
  return Buffer.from(t, "base64").toString("utf8");
}

/** PLAIN: `authzid NUL authcid NUL passwd`; the authzid must be empty or equal to the authcid. */
export function parsePlain(decoded: string): { user: string; password: string } | undefined {
  const parts = decoded.split("\0");
  if (parts.length !== 3) return undefined;
  const [authz, user, password] = parts as [string, string, string];
  if (user.length === 0 || (authz.length > 0 && authz !== user)) return undefined;
  return { user, password };
}

export async function verifyUser(
  users: Record<string, string>,
  user: string,
  password: string,
): Promise<boolean> {
  const hash = Object.hasOwn(users, user) ? users[user] : undefined;
  if (hash === undefined) {
    // Same work as for a known user: verify against some real hash, then refuse whatever it says.
    const other = Object.values(users)[0];
    if (other !== undefined) await Bun.password.verify(password, other).catch(() => false);
    return false;
  }
  try {
    return await Bun.password.verify(password, hash);
  } catch {
    return false;
  }
}
