/**
 * Who runs this process, as the system's user database says: `getpwuid(getuid())` through bun:ffi on
 * libc, so that NSS sources (LDAP, systemd's dynamic users) count as they do for Postfix's sendmail.
 *
 * Owns: `loginName()`. Never reads $USER or $LOGNAME (anyone can set them; cron sets them to the
 * crontab's owner, a caller of sendmail may not) and never Bun's `os.userInfo()`, which does.
 */
import { CString, dlopen, FFIType, type Pointer, read } from "bun:ffi";

type GetLogin = (uid: number) => string | undefined;
let getLogin: GetLogin | null | undefined;

function load(): GetLogin | null {
  if (getLogin !== undefined) return getLogin;
  try {
    const lib = dlopen(process.platform === "darwin" ? "libc.dylib" : "libc.so.6", {
      getpwuid: { args: [FFIType.u32], returns: FFIType.ptr },
    });
    getLogin = (uid) => {
      const pw = lib.symbols.getpwuid(uid) as Pointer | null;
      if (!pw) return undefined;
      // struct passwd starts with `char *pw_name` on every libc we run on.
      const name = read.ptr(pw, 0) as Pointer;
      return name ? new CString(name).toString() : undefined;
    };
  } catch {
    getLogin = null;
  }
  return getLogin;
}

/** The login name of the real user id, or undefined when it has no entry in the user database. */
export function loginName(uid = process.getuid?.() ?? 0): string | undefined {
  const fn = load();
  if (fn) return fn(uid) || undefined;
  return undefined;
}
