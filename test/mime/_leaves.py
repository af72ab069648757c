# Prints, as JSON, every leaf part of the message on stdin as Python's email package decodes it:
# its content type and its decoded payload (base64 of the octets). Used to check that a conversion
# kept the content the same as a third-party MIME reader sees it.
import base64, email, json, sys
from email import policy

m = email.message_from_bytes(sys.stdin.buffer.read(), policy=policy.compat32)
out = []
for p in m.walk():
    if p.is_multipart():
        continue
    payload = p.get_payload(decode=True)
    if payload is None:
        payload = b""
    out.append({"type": p.get_content_type(), "payload": base64.b64encode(payload).decode()})
headers = {k.lower(): " ".join(str(v).split()) for k, v in m.items() if k.lower() in ("subject", "references", "x-long")}
print(json.dumps({"leaves": out, "headers": headers}))
