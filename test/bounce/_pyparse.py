# Reads a DSN on stdin with Python's email package (an independent MIME parser) and prints what it
# understood as JSON: top-level fields, the parts' types, the delivery-status groups, the returned message.
import email, json, sys
from email import policy

raw = sys.stdin.buffer.read()
msg = email.message_from_bytes(raw, policy=policy.compat32)
out = {
    "defects": [type(d).__name__ for d in msg.defects],
    "from": msg["From"], "to": str(msg["To"]), "subject": msg["Subject"], "date": msg["Date"],
    "auto_submitted": msg["Auto-Submitted"],
    "content_type": msg.get_content_type(), "report_type": msg.get_param("report-type"),
    "parts": [], "status_groups": [], "returned": None, "max_line": max(len(l) for l in raw.split(b"\r\n")),
    "bare_lf": b"\n" in raw.replace(b"\r\n", b""),
}
for part in msg.get_payload():
    out["parts"].append(part.get_content_type())
    out["defects"] += [type(d).__name__ for d in part.defects]
    if part.get_content_type() == "message/delivery-status":
        for group in part.get_payload():
            out["status_groups"].append({k: " ".join(str(v).split()) for k, v in group.items()})
    elif part.get_content_type() == "message/rfc822":
        inner = part.get_payload()[0]
        out["returned"] = {"subject": str(inner["Subject"]), "body": inner.get_payload(decode=True).decode("utf-8", "replace")}
    elif part.get_content_type() == "text/rfc822-headers":
        out["returned"] = {"headers": part.get_payload()}
    elif part.get_content_type() == "text/plain":
        out["human"] = part.get_payload()
print(json.dumps(out))
