# A receiving SMTP server for tests, built on aiosmtpd (Debian's python3-aiosmtpd): a third-party
# implementation, so that what mta sends is judged by someone else's parser.
#
# Usage: aiosmtpd_peer.py PORT OUTFILE [--no-8bitmime] [--smtputf8] [--auth USER:PASS]
#                         [--reject-rcpt PREFIX] [--defer-rcpt PREFIX] [--host ADDR] [--tls CERT KEY]
# Prints "ready" once it listens. Each received message is one JSON line in OUTFILE: mail_from,
# rcpt_tos, mail_options, rcpt_options, tls (whether it came over STARTTLS), and the content as
# base64 (exact octets, decode_data off). Each refused AUTH is a line {"auth_failed": user}; each
# EHLO and MAIL command a line {"command": verb}. Without --tls it offers no STARTTLS (a server that
# hides it, as an attacker who strips it from the EHLO reply would).
import base64, json, signal, ssl, sys

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

port = int(sys.argv[1])
outfile = sys.argv[2]
args = sys.argv[3:]
no8bit = "--no-8bitmime" in args
smtputf8 = "--smtputf8" in args
auth = args[args.index("--auth") + 1].split(":", 1) if "--auth" in args else None
reject = args[args.index("--reject-rcpt") + 1] if "--reject-rcpt" in args else None
defer = args[args.index("--defer-rcpt") + 1] if "--defer-rcpt" in args else None
host = args[args.index("--host") + 1] if "--host" in args else "127.0.0.1"
tls = args[args.index("--tls") + 1 : args.index("--tls") + 3] if "--tls" in args else None


def record(obj):
    with open(outfile, "a", encoding="utf-8") as f:
        f.write(json.dumps(obj, ensure_ascii=False) + "\n")


class Handler:
    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        record({"command": "EHLO"})
        session.host_name = hostname
        if no8bit:
            responses = [r for r in responses if r[4:] != "8BITMIME"]
        return responses

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        record({"command": "MAIL"})
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if reject and address.startswith(reject):
            return "550 5.1.1 No such user here"
        if defer and address.startswith(defer):
            return "451 4.2.0 Try again later"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        record(
            {
                "mail_from": envelope.mail_from,
                "rcpt_tos": envelope.rcpt_tos,
                "mail_options": envelope.mail_options,
                "tls": session.ssl is not None,
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
if tls:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls[0], tls[1])
    kwargs.update({"tls_context": context, "require_starttls": False})
controller = Controller(Handler(), hostname=host, port=port, server_hostname="peer.test", **kwargs)
controller.start()
print("ready", flush=True)
signal.sigwait([signal.SIGTERM, signal.SIGINT])
controller.stop()
