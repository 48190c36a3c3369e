"""Parsing of SMTP command arguments: paths and ESMTP parameters.

Pure functions shared by the server engine and (later) the client. Every
input is one command line, already bounded by the caller's line limit.
"""

from __future__ import annotations

import re

from pyqmail.proto.smtp.replies import ADDRESS_TOO_LONG, BAD_ADDRESS, BAD_PARAMS, Reply

Params = tuple[tuple[bytes, bytes | None], ...]

_SPACE = 0x20
_QUOTE = 0x22
_BACKSLASH = 0x5C
_LT = 0x3C
_GT = 0x3E
_DEL = 0x7F

# "<addr>" with nothing split_path would treat specially (source route,
# quotes, backslashes, brackets, control bytes): every MAIL and RCPT of
# ordinary mail, taken without the byte-by-byte walk.
_PLAIN_PATH = re.compile(rb' *<((?:[^\x00-\x1f\x7f"\\<>@][^\x00-\x1f\x7f"\\<>]*)?)>')


class CommandSyntaxError(ValueError):
    """A command argument we refuse; `reply` is what to tell the client."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(f"{reply.code} {reply.text}")
        self.reply = reply


def parse_path(arg: bytes, *, max_len: int) -> bytes:
    """The address in a MAIL FROM:/RCPT TO: argument; b"" for "<>".

    Anything after the path (ESMTP parameters) is ignored here; use
    split_path to get it. Raises CommandSyntaxError (501 malformed,
    555 longer than max_len).
    """
    return split_path(arg, max_len=max_len)[0]


def split_path(arg: bytes, *, max_len: int) -> tuple[bytes, bytes]:
    """Split "<addr> PARAMS" into (address, rest); rest is b"" or starts with a space.

    As qmail-smtpd's addrparse (reference §9.3): leading spaces skipped;
    "<...>" form, or without "<" the text up to the next space (the form
    RFC 821 forbids but old clients send); a source route "@a,@b:" is
    dropped (RFC 5321 §4.1.1.3 says to ignore it); quotes and backslashes
    are honoured and removed, so '"a b"@x' gives b"a b@x".
    Stricter than qmail: a missing ">", an open quote, a stray "<" or ">",
    and control bytes (NUL would split qmail's envelope records) are 501.
    """
    plain = _PLAIN_PATH.match(arg)
    if plain is not None:
        addr = plain.group(1)
        if len(addr) > max_len:
            raise CommandSyntaxError(ADDRESS_TOO_LONG)
        rest = arg[plain.end() :]
        if rest and rest[0] != _SPACE:
            raise CommandSyntaxError(BAD_ADDRESS)  # "<a@b>junk"
        return addr, rest
    return _split_path_walk(arg, max_len=max_len)


def _split_path_walk(arg: bytes, *, max_len: int) -> tuple[bytes, bytes]:
    i = 0
    while i < len(arg) and arg[i] == _SPACE:
        i += 1
    bracketed = i < len(arg) and arg[i] == _LT
    if bracketed:
        i += 1
    # RFC 5321 §4.1.1.3 / qmail: drop an "@a,@b:" source route.
    if arg[i : i + 1] == b"@":
        end = arg.find(b">" if bracketed else b" ", i)
        colon = arg.find(b":", i, len(arg) if end < 0 else end)
        if colon < 0:
            raise CommandSyntaxError(BAD_ADDRESS)
        i = colon + 1
    addr = bytearray()
    quoted = False
    closed = False
    while i < len(arg):
        ch = arg[i]
        i += 1
        if ch < _SPACE or ch == _DEL:
            raise CommandSyntaxError(BAD_ADDRESS)
        if ch == _BACKSLASH:
            if i >= len(arg) or arg[i] < _SPACE or arg[i] == _DEL:
                raise CommandSyntaxError(BAD_ADDRESS)
            addr.append(arg[i])
            i += 1
        elif ch == _QUOTE:
            quoted = not quoted
        elif quoted:
            addr.append(ch)
        elif bracketed and ch == _GT:
            closed = True
            break
        elif not bracketed and ch == _SPACE:
            i -= 1  # the space belongs to the parameters
            break
        elif ch in (_LT, _GT):
            raise CommandSyntaxError(BAD_ADDRESS)
        else:
            addr.append(ch)
        if len(addr) > max_len:
            # qmail: 555 syntax error (#5.5.4) above 900 bytes.
            raise CommandSyntaxError(ADDRESS_TOO_LONG)
    if quoted or (bracketed and not closed):
        raise CommandSyntaxError(BAD_ADDRESS)
    if not bracketed and not addr:
        raise CommandSyntaxError(BAD_ADDRESS)
    rest = arg[i:]
    if rest and rest[0] != _SPACE:
        raise CommandSyntaxError(BAD_ADDRESS)  # "<a@b>junk"
    return bytes(addr), rest


def _is_keyword(key: bytes) -> bool:
    # RFC 5321 §4.1.2: esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")
    return key.isascii() and key[:1].isalnum() and key.replace(b"-", b"").isalnum()


def _is_value(value: bytes) -> bool:
    # RFC 5321 §4.1.2: esmtp-value = 1*(%d33-60 / %d62-126); RFC 6531 adds UTF-8.
    return bool(value) and all(ch > _SPACE and ch != 0x3D and ch != _DEL for ch in value)


def parse_params(rest: bytes) -> Params:
    """ESMTP parameters "KEY=VALUE KEY2" after a path; keys uppercased.

    Raises CommandSyntaxError(501) for a malformed keyword or value.
    """
    params: list[tuple[bytes, bytes | None]] = []
    for token in rest.split(b" "):
        if not token:
            continue  # several spaces in a row: lenient, as qmail is with spaces
        key, eq, value = token.partition(b"=")
        if not _is_keyword(key) or (eq and not _is_value(value)):
            raise CommandSyntaxError(BAD_PARAMS)
        params.append((key.upper(), value if eq else None))
    return tuple(params)
