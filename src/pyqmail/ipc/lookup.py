"""smtpd's questions to the lookup service (lspawn's side of the fence).

smtpd runs unprivileged and can read neither users' homes (for the RCPT
check) nor users/password (for AUTH); the service runs where local
delivery's lookups work (root in a system install) and answers one question
per connection over queue/lock/lookup.sock, to smtpd's uid (and root) only:

  smtpd -> service   netstring ``RCPT1\\0<address>``
                     netstring ``AUTH1\\0<user>\\0<password>\\0<timestamp>``
  service -> smtpd   netstring ``K`` (RCPT: deliverable or not ours to judge;
                                AUTH: password right), ``D<text>`` (RCPT: would
                                bounce; AUTH: wrong), ``Z<text>`` (cannot tell now)
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from pyqmail.formats import netstring
from pyqmail.ipc.frames import pack, read_frame

RCPT = b"RCPT1"
AUTH = b"AUTH1"
MAX_REQUEST_BYTES = 4096  # an address <= 1000 bytes; user and password bounded by sasl
MAX_ANSWER_BYTES = 512
RCPT_TIMEOUT_S = 10.0
AUTH_TIMEOUT_S = 40.0  # the checkpassword program itself gets 30
UNREACHABLE = b"Zunable to reach the lookup service (#4.3.0)"


@dataclass(frozen=True, slots=True)
class RcptQuestion:
    address: bytes


@dataclass(frozen=True, slots=True)
class AuthQuestion:
    user: bytes
    password: bytes
    timestamp: bytes


def decode_request(payload: bytes) -> RcptQuestion | AuthQuestion:
    """Parse one request; ValueError for anything malformed."""
    fields = payload.split(b"\0")
    if fields[0] == RCPT and len(fields) == 2:
        return RcptQuestion(fields[1])
    if fields[0] == AUTH and len(fields) == 4 and fields[1]:
        return AuthQuestion(fields[1], fields[2], fields[3])
    raise ValueError("malformed lookup request")


async def _ask(socket_path: str, request: bytes, timeout: float) -> bytes:
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_unix_connection(socket_path)
            try:
                writer.write(request)
                await writer.drain()
                answer = await read_frame(reader, MAX_ANSWER_BYTES)
            finally:
                writer.close()
    except (OSError, TimeoutError, asyncio.IncompleteReadError, netstring.NetstringError):
        return UNREACHABLE
    if not answer or answer[:1] not in (b"K", b"D", b"Z"):
        return UNREACHABLE
    return answer


async def ask_rcpt(socket_path: str, address: bytes) -> bytes:
    """K, D<text> or Z<text> for a recipient; Z when the service cannot be reached."""
    return await _ask(socket_path, pack(RCPT, address), RCPT_TIMEOUT_S)


async def ask_auth(socket_path: str, user: bytes, password: bytes, timestamp: bytes) -> bytes:
    """K (right), D (wrong) or Z (cannot tell) for a user's password."""
    return await _ask(socket_path, pack(AUTH, user, password, timestamp), AUTH_TIMEOUT_S)
