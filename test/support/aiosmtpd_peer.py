# A receiving SMTP server for tests, built on aiosmtpd (Debian's python3-aiosmtpd): a third-party
# implementation, so that what mta sends is judged by someone else's parser.
#
# Usage: aiosmtpd_peer.py PORT OUTFILE [--no-8bitmime] [--smtputf8] [--auth USER:PASS]
#                         [--reject-rcpt PREFIX]
# Prints "ready" once it listens. Each received message is one JSON line in OUTFILE: mail_from,
# rcpt_tos, mail_options, rcpt_options, and the content as base64 (exact octets, decode_data off).
# Each refused AUTH is a line {"auth_failed": user}.
import asyncio, base64, json, signal, sys

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

port = int(sys.argv[1])
outfile = sys.argv[2]
args = sys.argv[3:]
no8bit = "--no-8bitmime" in args
smtputf8 = "--smtputf8" in args
auth = args[args.index("--auth") + 1].split(":", 1) if "--auth" in args else None
reject = args[args.index("--reject-rcpt") + 1] if "--reject-rcpt" in args else None


def record(obj):
    with open(outfile, "a", encoding="utf-8") as f:
        f.write(json.dumps(obj, ensure_ascii=False) + "\n")


class Handler:
    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        if no8bit:
            responses = [r for r in responses if r[4:] != "8BITMIME"]
        return responses

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if reject and address.startswith(reject):
            return "550 5.1.1 No such user here"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        record(
            {
                "mail_from": envelope.mail_from,
                "rcpt_tos": envelope.rcpt_tos,
                "mail_options": envelope.mail_options,
                "content": base64.b64encode(envelope.original_content or envelope.content).decode(),
            }
        )
        return "250 2.0.0 Message accepted"


def authenticator(server, session, envelope, mechanism, auth_data):
    ok = auth is not None and auth_data.login.decode() == auth[0] and auth_data.password.decode() == auth[1]
    if not ok:
        record({"auth_failed": auth_data.login.decode()})
    return AuthResult(success=ok, handled=False)


kwargs = {"enable_SMTPUTF8": smtputf8, "decode_data": False}
if auth:
    kwargs.update({"authenticator": authenticator, "auth_require_tls": False})
controller = Controller(Handler(), hostname="127.0.0.1", port=port, **kwargs)
controller.start()
print("ready", flush=True)
signal.sigwait([signal.SIGTERM, signal.SIGINT])
controller.stop()
