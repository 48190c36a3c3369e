"""What the QMTP and QMQP engines report, in the protocols' own words."""

from __future__ import annotations

from dataclasses import dataclass


class RemoteProtocolError(Exception):
    """The peer broke the protocol; qmail drops such a connection (exit 100)."""


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = _NeedData()


@dataclass(frozen=True, slots=True)
class MessageStart:
    """A package began: the Received line goes to the queue now."""


@dataclass(frozen=True, slots=True)
class MessageChunk:
    data: bytes  # already in UNIX (LF) form


@dataclass(frozen=True, slots=True)
class Recipient:
    address: bytes  # cut to the address limit when too long
    acceptable: bool  # False: too long or holds a NUL (qmail's "can't handle")


@dataclass(frozen=True, slots=True)
class Package:
    """The whole package has arrived; the server owes its answers now."""

    sender: bytes
    sender_ok: bool
    recipients: tuple[Recipient, ...]
    too_big: bool  # over the size limit: the message was read and dropped
    size: int  # message bytes in UNIX form, counted up to the limit + 1


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The peer closed cleanly between packages."""


Event = MessageStart | MessageChunk | Package | ConnectionClosed
