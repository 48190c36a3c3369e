"""SASL exchanges for SMTP AUTH (RFC 4954), sans-IO: PLAIN and LOGIN.

The server engine turns "AUTH mech [initial]" into an Auth event and each
line after a 334 into an AuthLine event; an exchange turns those into the
next challenge, the credentials to check, or the reply that ends it.

CRAM-MD5 is not offered: it needs the clear password on the server side,
and the checkpassword interface (and pyqmail's hashed password file) only
ever verifies one.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from pyqmail.proto.smtp.replies import Reply

MECHANISMS = (b"PLAIN", b"LOGIN")
MAX_USER_BYTES = 256
MAX_PASSWORD_BYTES = 1024

UNKNOWN_MECHANISM = Reply(504, "unrecognized authentication type (#5.5.4)")
CANNOT_DECODE = Reply(501, "malformed auth input (#5.5.2)")
CANCELLED = Reply(501, "authentication cancelled (#5.0.0)")
REFUSED = Reply(535, "authorization failed (#5.7.8)")


@dataclass(frozen=True, slots=True)
class Challenge:
    text: str  # base64, sent as "334 text"


@dataclass(frozen=True, slots=True)
class Credentials:
    user: bytes
    password: bytes


@dataclass(frozen=True, slots=True)
class Failed:
    reply: Reply


Step = Challenge | Credentials | Failed

_USERNAME = base64.b64encode(b"Username:").decode()
_PASSWORD = base64.b64encode(b"Password:").decode()


def _decode(data: bytes) -> bytes | None:
    if data == b"=":
        return b""  # RFC 4954 §4: "=" is an empty initial response
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return None


def _credentials(user: bytes, password: bytes) -> Step:
    # NUL separates the fields on checkpassword's fd 3: one inside a field
    # would let the client write the next one.
    if not user or b"\0" in user or b"\0" in password:
        return Failed(REFUSED)
    if len(user) > MAX_USER_BYTES or len(password) > MAX_PASSWORD_BYTES:
        return Failed(REFUSED)
    return Credentials(user, password)


class SaslExchange:
    """One AUTH exchange. start() first, then step() with each AuthLine."""

    def __init__(self, mechanism: bytes, initial: bytes | None) -> None:
        self.mechanism = mechanism.upper()
        self._initial = initial
        self._user: bytes | None = None

    def start(self) -> Step:
        if self.mechanism not in MECHANISMS:
            return Failed(UNKNOWN_MECHANISM)
        if self._initial is None:
            return Challenge("" if self.mechanism == b"PLAIN" else _USERNAME)
        return self._answer(self._initial)

    def step(self, line: bytes) -> Step:
        if line.strip() == b"*":
            return Failed(CANCELLED)  # RFC 4954 §4
        return self._answer(line.strip())

    def _answer(self, data: bytes) -> Step:
        decoded = _decode(data)
        if decoded is None:
            return Failed(CANNOT_DECODE)
        if self.mechanism == b"PLAIN":
            # RFC 4616: [authzid] NUL authcid NUL passwd
            parts = decoded.split(b"\0")
            if len(parts) != 3:
                return Failed(CANNOT_DECODE)
            authzid, user, password = parts
            if authzid and authzid != user:
                return Failed(REFUSED)  # acting for someone else is not offered
            return _credentials(user, password)
        if self._user is None:
            self._user = decoded
            return Challenge(_PASSWORD)
        return _credentials(self._user, decoded)
