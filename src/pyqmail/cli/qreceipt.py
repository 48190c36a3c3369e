"""qreceipt youraddress: answer a delivery-notice request, from a .qmail.

Runs as: the .qmail owner, under qmail-local (fd 0 the message, SENDER set).
If the header has a ``Notice-Requested-Upon-Delivery-To:`` field naming
youraddress, and SENDER is a real address (not empty, not ``#@[]``), a
"success notice" goes to SENDER with an empty envelope sender, through the
queue writer.
Exit:    0; 100 usage, SENDER missing or permanent queue error; 111 temporary.
"""

from __future__ import annotations

import email.utils
import os
import sys

from pyqmail.cli.helpers import EXIT_PERM, Fatal, fail, need_env, queue, read_message

FIELD = b"notice-requested-upon-delivery-to"
MAX_HEADER_BYTES = 1 << 20


def header_fields(message: bytes) -> list[tuple[bytes, bytes]]:
    """(lowercased name, unfolded value) for each header field."""
    head = message[:MAX_HEADER_BYTES].split(b"\n\n", 1)[0]
    fields: list[tuple[bytes, bytes]] = []
    for line in head.split(b"\n"):
        if line[:1] in (b" ", b"\t") and fields:
            name, value = fields[-1]
            fields[-1] = (name, value + b" " + line.strip())
        elif b":" in line:
            name, _, value = line.partition(b":")
            fields.append((name.strip().lower(), value.strip()))
    return fields


def wants_receipt(fields: list[tuple[bytes, bytes]], target: str) -> bool:
    for name, value in fields:
        if name != FIELD:
            continue
        text = value.decode("utf-8", "replace")
        if any(addr.lower() == target.lower() for _, addr in email.utils.getaddresses([text])):
            return True
    return False


def _safe(text: str) -> str:
    return text.replace("\n", "_").replace("\r", "_")


def notice(target: str, sender: str, message_id: bytes | None) -> bytes:
    text = (
        f"From: DELIVERY NOTICE SYSTEM <{_safe(target)}>\n"
        f"To: <{_safe(sender)}>\n"
        "Subject: success notice\n"
        "\n"
        "Hi! This is the qreceipt program. Your message was delivered to the\n"
        f"following address: {_safe(target)}. Thanks for asking.\n"
    )
    if message_id:
        text += f"Your Message-ID: {_safe(message_id.decode('utf-8', 'replace'))}\n"
    return text.encode()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        if len(args) != 1:
            raise Fatal(EXIT_PERM, "usage: qreceipt deliveryaddress")
        sender = need_env("SENDER")
        if not sender or sender == b"#@[]":
            return 0  # never answer a bounce
        fields = header_fields(read_message())
        if not wants_receipt(fields, args[0]):
            return 0
        message_id = next((v for n, v in fields if n == b"message-id"), None)
        sender_s = os.fsdecode(sender)
        qp = queue(b"", [sender], notice(args[0], sender_s, message_id))
    except Fatal as exc:
        return fail("qreceipt", exc)
    print(f"qreceipt: qp {qp}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
