"""A receiving MX for the outbound TLS tests: Python's aiosmtpd, with or without STARTTLS.

Usage: tlsPeer.py HOST PORT OUTDIR [CERT KEY]
Without CERT/KEY the server does not offer STARTTLS (a peer that hides it, as an attacker who strips
it from the EHLO reply would). Every command verb it sees is appended to OUTDIR/commands.log; every
message is written to OUTDIR/<n>.json with its envelope and whether it came over TLS. Prints "ready".
"""
import asyncio
import json
import os
import ssl
import sys

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP


class Recorder:
    def __init__(self, outdir):
        self.outdir = outdir
        self.count = 0

    def log(self, verb):
        with open(os.path.join(self.outdir, "commands.log"), "a") as f:
            f.write(verb + "\n")

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        self.log("EHLO")
        session.host_name = hostname
        return responses

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        self.log("MAIL")
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.count += 1
        record = {
            "from": envelope.mail_from,
            "to": envelope.rcpt_tos,
            "tls": session.ssl is not None,
            "data": envelope.content.decode("utf-8", "replace"),
        }
        path = os.path.join(self.outdir, f"{self.count:04d}.json")
        with open(path + ".tmp", "w") as f:
            json.dump(record, f)
        os.rename(path + ".tmp", path)
        return "250 2.0.0 stored"


def main():
    host, port, outdir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    os.makedirs(outdir, exist_ok=True)
    context = None
    if len(sys.argv) > 5:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(sys.argv[4], sys.argv[5])
    handler = Recorder(outdir)
    controller = Controller(
        handler,
        hostname=host,
        port=port,
        tls_context=context,
        require_starttls=False,
        server_hostname="peer.test",
        ready_timeout=10,
    )
    controller.start()
    print("ready", flush=True)
    try:
        asyncio.get_event_loop().run_until_complete(asyncio.sleep(3600))
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
