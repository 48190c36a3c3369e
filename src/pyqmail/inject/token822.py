"""RFC 822 header tokens as qmail-inject sees them: parse, address lists, unparse.

Pure. A faithful model of qmail's token822 so that rewritten headers and
envelope addresses come out byte for byte as qmail's would: address lists
are read right to left (so the rightmost address is handed over first),
rewritten fields are folded after commas at 80 columns, and anything an
atom may not hold turns it into a quoted string.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from pyqmail.formats.address import split_at_last_at

LINE_LEN = 80  # qmail-inject's LINELEN: fold rewritten address lists here


class Kind(enum.Enum):
    ATOM = 1
    QUOTE = 2
    LITERAL = 3
    COMMENT = 4
    COMMA = 5
    AT = 6
    DOT = 7
    LEFT = 8
    RIGHT = 9
    SEMI = 10
    COLON = 11


TEXT_KINDS = frozenset({Kind.ATOM, Kind.QUOTE, Kind.LITERAL, Kind.COMMENT})
_PUNCT = {
    ord("."): Kind.DOT,
    ord(","): Kind.COMMA,
    ord("@"): Kind.AT,
    ord("<"): Kind.LEFT,
    ord(">"): Kind.RIGHT,
    ord(":"): Kind.COLON,
    ord(";"): Kind.SEMI,
}
_PUNCT_OUT = {kind: bytes([ch]) for ch, kind in _PUNCT.items()}
_SPACE = frozenset(b" \t\r\n")
_NOT_ATOM = frozenset(b' \t\r\n(["<>;:@,.')
_ESCAPED = frozenset(b'"[]()\\\r\n')
_QUOTED_ATOM = frozenset(b")]\\")


class Token822Error(ValueError):
    """The text cannot be tokenized or is not an address list."""


@dataclass(frozen=True, slots=True)
class Token:
    kind: Kind
    text: bytes = b""


Address = list[Token]
Rewrite = Callable[[Address], Address]


def _enclosed(data: bytes, i: int, close: int, nest: int | None) -> tuple[bytes, int]:
    """Text of a quoted string, literal or comment opened at data[i]; index of its end."""
    level = 1
    out = bytearray()
    n = len(data)
    while True:
        i += 1
        if i >= n:
            raise Token822Error("unbalanced quote, bracket or parenthesis")
        ch = data[i]
        # a nested comment's own parentheses are dropped, as qmail does
        if ch == close:
            level -= 1
            if not level:
                return bytes(out), i
            continue
        if nest is not None and ch == nest:
            level += 1
            continue
        if ch == 0x5C:  # backslash quotes the next byte
            i += 1
            if i >= n:
                raise Token822Error("backslash at the end")
            ch = data[i]
        out.append(ch)


def parse(data: bytes) -> list[Token]:
    """Tokens of one header field (name included), as qmail's token822_parse."""
    tokens: list[Token] = []
    n = len(data)
    i = 0
    while i < n:
        ch = data[i]
        kind = _PUNCT.get(ch)
        if kind is not None:
            tokens.append(Token(kind))
        elif ch in _SPACE:
            pass
        elif ch in (0x29, 0x5D):  # a stray ')' or ']'
            raise Token822Error("unbalanced ')' or ']'")
        elif ch == 0x28:
            text, i = _enclosed(data, i, 0x29, 0x28)
            tokens.append(Token(Kind.COMMENT, text))
        elif ch == 0x22:
            text, i = _enclosed(data, i, 0x22, None)
            tokens.append(Token(Kind.QUOTE, text))
        elif ch == 0x5B:
            text, i = _enclosed(data, i, 0x5D, None)
            tokens.append(Token(Kind.LITERAL, text))
        else:
            atom = bytearray()
            while True:
                if data[i] == 0x5C:
                    i += 1
                    if i >= n:
                        break
                atom.append(data[i])
                i += 1
                if i >= n or data[i] in _NOT_ATOM:
                    break
            i -= 1
            # an atom holding what an atom may not is written as a quoted string
            bad = any(c < 32 or c > 126 or c in _QUOTED_ATOM for c in atom)
            tokens.append(Token(Kind.QUOTE if bad else Kind.ATOM, bytes(atom)))
        i += 1
    return tokens


def _needspace(last: Kind | None, new: Kind) -> bool:
    if last is None:
        return False
    if last in (Kind.COLON, Kind.COMMA) or new is Kind.LEFT:
        return True
    return last in TEXT_KINDS and new in TEXT_KINDS


def unparse(tokens: list[Token], line_len: int = LINE_LEN) -> bytes:
    """Tokens back to a header field ending in a newline, folded after commas.

    Every comma is followed by a tentative line break; a break is kept only
    when the line it ends would otherwise grow past line_len (qmail's NSUW).
    """
    buf = bytearray()
    line_begin = 0
    last_break: int | None = None

    def tentative_break() -> None:
        nonlocal line_begin, last_break
        end = len(buf)
        buf.extend(b"\n ")
        if last_break is not None and (not line_len or end - line_begin <= line_len):
            del buf[last_break : last_break + 2]
            last_break = end - 2
        else:
            if last_break is not None:
                line_begin = last_break + 1
            last_break = end

    last: Kind | None = None
    for tok in tokens:
        if _needspace(last, tok.kind):
            buf.append(0x20)
        last = tok.kind
        if tok.kind is Kind.COMMA:
            buf.append(0x2C)
            tentative_break()
        elif tok.kind in TEXT_KINDS:
            if tok.kind is Kind.QUOTE:
                buf.append(0x22)
            elif tok.kind is Kind.LITERAL:
                buf.append(0x5B)
            elif tok.kind is Kind.COMMENT:
                buf.append(0x28)
            for ch in tok.text:
                if ch in _ESCAPED:
                    buf.append(0x5C)
                buf.append(ch)
            if tok.kind is Kind.QUOTE:
                buf.append(0x22)
            elif tok.kind is Kind.LITERAL:
                buf.append(0x5D)
            elif tok.kind is Kind.COMMENT:
                buf.append(0x29)
        else:
            buf.extend(_PUNCT_OUT[tok.kind])
    tentative_break()
    del buf[-1]
    return bytes(buf)


def unquote(tokens: list[Token]) -> bytes:
    """The bare address: quoted text unquoted, literals bracketed, comments dropped."""
    out = bytearray()
    for tok in tokens:
        if tok.kind is Kind.COMMENT:
            continue
        if tok.kind is Kind.LITERAL:
            out += b"[" + tok.text + b"]"
        elif tok.kind in TEXT_KINDS:
            out += tok.text
        else:
            out += _PUNCT_OUT[tok.kind]
    return bytes(out)


def addrlist(tokens: list[Token], rewrite: Rewrite) -> list[Token]:
    """Hand every address of a header field to rewrite; the field with the results.

    tokens[0:2] are the field name and its colon. RFC 822 address lists are
    easy to parse from right to left (qmail's comment), so that is the order
    in which rewrite sees the addresses. An empty ``<>`` is an address too.
    """
    out: list[Token] = []  # built backwards
    addr: list[Token] = []  # the current address, backwards
    start = 2

    def got() -> None:
        addr.reverse()
        result = rewrite(list(addr))
        out.extend(reversed(result))
        addr.clear()

    def flush(comma: bool) -> None:
        if addr:
            got()
            if comma:
                out.append(Token(Kind.COMMA))

    in_group = False
    word_ok = True
    t = len(tokens) - 1
    while t >= start:
        tok = tokens[t]
        kind = tok.kind
        if kind is Kind.SEMI:
            flush(comma=True)
            if in_group:
                raise Token822Error("';' inside a group")
            in_group = True
            word_ok = True
        elif kind is Kind.COLON:
            flush(comma=False)
            if not in_group:
                raise Token822Error("':' outside a group")
            in_group = False
            while t >= start and tokens[t].kind is not Kind.COMMA:
                out.append(tokens[t])
                t -= 1
            if t >= start:
                out.append(tokens[t])
                t -= 1
            word_ok = True
            continue
        elif kind is Kind.RIGHT:
            flush(comma=True)
            out.append(tok)
            t -= 1
            while t >= start and tokens[t].kind is not Kind.LEFT:
                addr.append(tokens[t])
                t -= 1
            got()
            if t < start:
                raise Token822Error("'>' without '<'")
            out.append(tokens[t])
            t -= 1
            while t >= start and tokens[t].kind in (
                Kind.COMMENT,
                Kind.ATOM,
                Kind.QUOTE,
                Kind.AT,
                Kind.DOT,
            ):
                out.append(tokens[t])
                t -= 1
            word_ok = False
            continue
        elif kind in (Kind.ATOM, Kind.QUOTE, Kind.LITERAL):
            if not word_ok:
                flush(comma=True)
            word_ok = False
            addr.append(tok)
            t -= 1
            continue
        elif kind is Kind.COMMENT:
            pass  # lexically a space
        elif kind is Kind.COMMA:
            flush(comma=False)
            word_ok = True
        else:
            word_ok = True
            addr.append(tok)
            t -= 1
            continue
        out.append(tok)
        t -= 1
    flush(comma=False)
    out.extend(reversed(tokens[: min(len(tokens), start)]))
    out.reverse()
    return out


# -- quoting of bare addresses (qmail's quote.c) ----------------------------------

_ATEXT = frozenset(
    b"!#$%&'*+-./0123456789=?ABCDEFGHIJKLMNOPQRSTUVWXYZ^_`abcdefghijklmnopqrstuvwxyz{|}~"
)


def quote_need(local: bytes) -> bool:
    if not local:
        return True
    if any(c not in _ATEXT for c in local):
        return True
    return local.startswith(b".") or local.endswith(b".") or b".." in local


def quote(local: bytes) -> bytes:
    if not quote_need(local):
        return local
    out = bytearray(b'"')
    for c in local:
        if c in b'\r\n"\\':
            out.append(0x5C)
        out.append(c)
    out.append(0x22)
    return bytes(out)


def quote2(addr: bytes) -> bytes:
    """An envelope address as RFC 822 text: the local part quoted when it must be."""
    if not addr:
        return addr
    local, domain = split_at_last_at(addr)
    if domain is None:
        return quote(addr)
    return quote(local) + b"@" + domain
