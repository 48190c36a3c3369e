"""qmail-inject's header rewriting: pure, bytes in, header and envelope out.

The caller feeds header fields one by one (``field``), then asks for the
finished header (``finish``) and the envelope (``sender``, ``recipients``).
Time, pid, environment and control values come in as arguments.

What qmail-inject does (qmail-programs "qmail-inject"), kept here exactly:
- address fields (To, Cc, Bcc, From, Sender, Reply-To, Return-Path, their
  Resent- forms...) are re-tokenized, every address is qualified
  (defaulthost, plusdomain, defaultdomain) and the field is written back
  folded at 80 columns;
- Bcc, Resent-Bcc, Return-Path and Content-Length are removed;
- Date, Message-ID, From and "Cc: recipient list not shown: ;" are added
  when missing (their Resent- forms for a resent message), before the
  original fields;
- the envelope sender is -f, else the first Return-Path, else the user's
  address; recipients come from the arguments and/or To/Cc/Bcc/Apparently-To
  (Resent-To/Cc/Bcc for a resent message).

One deliberate difference: the host ``localhost`` is never qualified with
defaultdomain (RFC 6761 §6.3); qmail would turn ``joe@localhost`` into
``joe@localhost.<defaultdomain>``, which breaks a home whose name is
localhost.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from pyqmail.formats.dates import date822
from pyqmail.inject import token822 as tk
from pyqmail.inject.token822 import Kind, Token, Token822Error

EXIT_PERM = 100
EXIT_TEMP = 111
MAX_RECIPIENTS = 100_000  # the queue's own envelope limit

# hfield.c's table, in its order; the index is only used for "seen" sets
KNOWN_FIELDS = (
    "sender",
    "from",
    "reply-to",
    "to",
    "cc",
    "bcc",
    "date",
    "message-id",
    "subject",
    "resent-sender",
    "resent-from",
    "resent-reply-to",
    "resent-to",
    "resent-cc",
    "resent-bcc",
    "resent-date",
    "resent-message-id",
    "return-receipt-to",
    "errors-to",
    "apparently-to",
    "received",
    "return-path",
    "delivered-to",
    "content-length",
    "content-type",
    "content-transfer-encoding",
    "notice-requested-upon-delivery-to",
    "mail-followup-to",
)
_RESENT_MARKERS = frozenset(f for f in KNOWN_FIELDS if f.startswith("resent-"))
_SENDER_LIKE = frozenset(
    {
        "sender",
        "from",
        "reply-to",
        "return-receipt-to",
        "errors-to",
        "resent-sender",
        "resent-from",
        "resent-reply-to",
    }
)
_DROPPED = frozenset({"bcc", "resent-bcc", "return-path", "content-length"})


class InjectError(Exception):
    """Why qmail-inject gives up; code is its exit code (100 or 111)."""

    def __init__(self, text: str, code: int = EXIT_PERM) -> None:
        super().__init__(text)
        self.text = text
        self.code = code


def known_field(field: bytes) -> str | None:
    """hfield_known: the field's lowercase name if it is one qmail-inject knows."""
    for name in KNOWN_FIELDS:
        raw = name.encode()
        if len(field) <= len(raw):
            continue
        ok = True
        for i, ch in enumerate(raw):
            got = field[i]
            if got != ch and (ch == 0x2D or not 0x61 <= ch <= 0x7A or got != ch - 32):
                ok = False
                break
        if not ok:
            continue
        for ch in field[len(raw) :]:
            if ch == 0x3A:
                return name
            if ch not in (0x20, 0x09):
                break
    return None


def valid_field(line: bytes) -> bool:
    """hfield_valid: a non-empty name of printable non-space bytes, then blanks, then ':'."""
    colon = line.find(b":")
    if colon < 0:
        return False
    name = line[:colon].rstrip(b" \t")
    return bool(name) and all(32 < c < 127 for c in name)


@dataclass(frozen=True, slots=True)
class InjectSettings:
    """Everything qmail-inject takes from its environment and control files."""

    defaulthost: bytes
    defaultdomain: bytes
    plusdomain: bytes
    idhost: bytes
    mailuser: bytes  # From: user
    mailhost: bytes | None
    mailruser: bytes  # default envelope sender user
    mailrhost: bytes | None
    fullname: bytes | None
    name_comment: bool = False  # QMAILINJECT c
    delete_return_path: bool = False  # s
    delete_from: bool = False  # f
    delete_message_id: bool = False  # i
    verp_recipient: bool = False  # r
    verp_message: bool = False  # m
    mft: frozenset[bytes] | None = None  # QMAILMFTFILE lines, lowercased


def settings_from_env(
    env: Mapping[bytes, bytes],
    *,
    defaulthost: bytes,
    defaultdomain: bytes,
    plusdomain: bytes,
    idhost: bytes,
    mft: frozenset[bytes] | None = None,
) -> InjectSettings:
    """qmail-inject's environment, over the control-file values given."""

    def first(*names: bytes) -> bytes | None:
        for name in names:
            value = env.get(name)
            if value is not None:
                return value
        return None

    flags = env.get(b"QMAILINJECT", b"")
    mailhost = first(b"QMAILHOST", b"MAILHOST")
    mailuser = first(b"QMAILUSER", b"MAILUSER", b"USER", b"LOGNAME") or b"anonymous"
    return InjectSettings(
        defaulthost=env.get(b"QMAILDEFAULTHOST", defaulthost),
        defaultdomain=env.get(b"QMAILDEFAULTDOMAIN", defaultdomain),
        plusdomain=env.get(b"QMAILPLUSDOMAIN", plusdomain),
        idhost=env.get(b"QMAILIDHOST", idhost),
        mailuser=mailuser,
        mailhost=mailhost,
        mailruser=env.get(b"QMAILSUSER", mailuser),
        mailrhost=env.get(b"QMAILSHOST", mailhost),
        fullname=first(b"QMAILNAME", b"MAILNAME", b"NAME"),
        name_comment=b"c" in flags,
        delete_return_path=b"s" in flags,
        delete_from=b"f" in flags,
        delete_message_id=b"i" in flags,
        verp_recipient=b"r" in flags,
        verp_message=b"m" in flags,
        mft=mft,
    )


def parse_mft(text: bytes) -> frozenset[bytes]:
    """QMAILMFTFILE: one list address a line; blank and '#' lines skipped."""
    out = set()
    for raw in text.split(b"\n"):
        line = raw.rstrip(b" \t\r")
        if line and not line.startswith(b"#"):
            out.add(line.lower())
    return frozenset(out)


def date_field(now: float) -> bytes:
    return b"Date: " + date822(now).encode() + b"\n"


def message_id_field(now: float, pid: int, idhost: bytes) -> bytes:
    t = time.gmtime(now)
    stamp = b"%d%02d%02d%02d%02d%02d" % (
        t.tm_year,
        t.tm_mon,
        t.tm_mday,
        t.tm_hour,
        t.tm_min,
        t.tm_sec,
    )
    return b"Message-ID: <%s.%d.qmail@%s>\n" % (stamp, pid, idhost)


def _parse_or_die(line: bytes) -> list[Token]:
    try:
        return tk.parse(line)
    except Token822Error:
        raise InjectError(
            "unable to parse this line:\n" + line.decode("utf-8", "replace")
        ) from None


class Injector:
    """One message's header and envelope, built the way qmail-inject builds them."""

    def __init__(self, settings: InjectSettings, *, now: float, pid: int) -> None:
        self.s = settings
        self.now = now
        self.pid = pid
        self._defaulthost = _parse_or_die(b"@" + settings.defaulthost)
        self._defaultdomain = _parse_or_die(b"." + settings.defaultdomain)
        self._plusdomain = _parse_or_die(b"." + settings.plusdomain)
        self.sender: bytes | None = None
        self.arg_recipients: list[bytes] = []
        self._hr: list[bytes] = []  # To, Cc, Bcc, Apparently-To
        self._hrr: list[bytes] = []  # Resent-To, -Cc, -Bcc
        self._tocc: list[bytes] = []  # To, Cc (for Mail-Followup-To)
        self._seen: set[str] = set()
        self._saved: list[bytes] = []
        self.resent = False

    # -- address rewriting (qmail-inject's rw* functions) ---------------------
    def qualify(self, addr: list[Token]) -> list[Token]:
        """rwgeneric: strip source routes and stray dots/ats, then complete the host."""
        if not addr:
            return addr  # <> stays <>
        if (
            len(addr) >= 2
            and addr[-2].kind is Kind.AT
            and addr[-1].kind is Kind.LITERAL
            and not addr[-1].text
        ):
            return addr  # <foo@[]>: a VERP marker, leave alone
        if addr[0].kind is Kind.AT:  # <@a,@b:user@host> -> <user@host>
            colon = next((i for i, t in enumerate(addr) if t.kind is Kind.COLON), len(addr))
            addr = addr[colon + 1 :]
            if not addr:
                return addr
        if addr[-1].kind is Kind.DOT:
            addr = addr[:-1]
            if not addr:
                return addr
        if addr[-1].kind is Kind.AT:
            addr = addr[:-1]
            if not addr:
                return addr
        if not any(t.kind is Kind.AT for t in addr):
            addr = addr + self._defaulthost
        last = addr[-1]
        if last.kind is Kind.ATOM and last.text.endswith(b"+"):
            addr = [*addr[:-1], Token(Kind.ATOM, last.text[:-1]), *self._plusdomain]
        ats = [i for i, t in enumerate(addr) if t.kind is Kind.AT]
        host = addr[ats[-1] + 1 :] if ats else addr
        if any(t.kind in (Kind.DOT, Kind.LITERAL) for t in host):
            return addr
        if len(host) == 1 and host[0].text.lower() == b"localhost":
            return addr  # RFC 6761: never qualified (see the module note)
        return addr + self._defaultdomain

    def _set_return(self, addr: list[Token]) -> None:
        if self.sender is None:
            sender = tk.unquote(addr)
            if self.s.verp_recipient:
                sender += b"-@[]"
            self.sender = sender

    def _rw_return(self, addr: list[Token]) -> list[Token]:
        addr = self.qualify(addr)
        self._set_return(addr)
        return addr

    def _rw_hr(self, addr: list[Token]) -> list[Token]:
        addr = self.qualify(addr)
        self._append(self._hr, addr)
        return addr

    def _rw_hrr(self, addr: list[Token]) -> list[Token]:
        addr = self.qualify(addr)
        self._append(self._hrr, addr)
        return addr

    def _rw_tocc(self, addr: list[Token]) -> list[Token]:
        addr = self.qualify(addr)
        self._append(self._hr, addr)
        self._tocc.append(tk.unquote(addr))
        return addr

    def _append(self, where: list[bytes], addr: list[Token]) -> None:
        if len(self._hr) + len(self._hrr) + len(self.arg_recipients) >= MAX_RECIPIENTS:
            raise InjectError(f"more than {MAX_RECIPIENTS} recipients")
        where.append(tk.unquote(addr))

    # -- inputs ---------------------------------------------------------------
    def set_sender(self, arg: bytes) -> None:
        """-f: the envelope sender, qualified like any address; '' is <>."""
        tokens = _parse_or_die(tk.quote2(arg))
        self.sender = tk.unquote(self.qualify(tokens))

    def add_recipient(self, arg: bytes) -> None:
        """A recipient argument."""
        try:
            tokens = tk.parse(tk.quote2(arg))
        except Token822Error:
            raise InjectError(
                "unable to parse address: " + arg.decode("utf-8", "replace")
            ) from None
        self._append(self.arg_recipients, self.qualify(tokens))

    def field(self, h: bytes) -> None:
        """One header field, continuation lines included, ending in a newline."""
        name = known_field(h)
        if name == "from" and self.s.delete_from:
            return
        if name == "message-id" and self.s.delete_message_id:
            return
        if name == "return-path" and self.s.delete_return_path:
            return
        if name is not None:
            self._seen.add(name)
        elif not valid_field(h):
            raise InjectError("invalid header field: " + h.decode("utf-8", "replace"))
        if name in ("to", "cc"):
            h = self._rewrite(h, self._rw_tocc)
        elif name in ("bcc", "apparently-to"):
            h = self._rewrite(h, self._rw_hr)
        elif name in ("resent-to", "resent-cc", "resent-bcc"):
            h = self._rewrite(h, self._rw_hrr)
        elif name == "return-path":
            h = self._rewrite(h, self._rw_return)
        elif name in _SENDER_LIKE:
            h = self._rewrite(h, self.qualify)
        if name in _DROPPED:
            return
        self._saved.append(h)

    def _rewrite(self, h: bytes, rw: tk.Rewrite) -> bytes:
        tokens = _parse_or_die(h)
        try:
            return tk.unparse(tk.addrlist(tokens, rw))
        except Token822Error:
            raise InjectError(
                "unable to parse this line:\n" + h.decode("utf-8", "replace")
            ) from None

    # -- output ---------------------------------------------------------------
    def _default_from(self) -> bytes:
        s = self.s
        toks: list[Token] = [Token(Kind.ATOM, b"From"), Token(Kind.COLON)]
        named = s.fullname is not None and not s.name_comment
        if named:
            toks += [Token(Kind.QUOTE, s.fullname or b""), Token(Kind.LEFT)]
        user_kind = Kind.QUOTE if tk.quote_need(s.mailuser) else Kind.ATOM
        toks.append(Token(user_kind, s.mailuser))
        if s.mailhost is not None:
            toks += [Token(Kind.AT), Token(Kind.ATOM, s.mailhost)]
        if named:
            toks.append(Token(Kind.RIGHT))
        if s.fullname is not None and s.name_comment:
            toks.append(Token(Kind.COMMENT, s.fullname))
        return self._rewrite(tk.unparse(toks), self.qualify)

    def _default_return_path(self) -> None:
        s = self.s
        user = s.mailruser
        if s.verp_message:
            user += b"-%d.%d" % (int(self.now), self.pid)
        if s.verp_recipient:
            user += b"-"
        toks: list[Token] = [
            Token(Kind.ATOM, b"Return-Path"),
            Token(Kind.COLON),
            Token(Kind.QUOTE, user),
        ]
        if s.mailrhost is not None:
            toks += [Token(Kind.AT), Token(Kind.ATOM, s.mailrhost)]
        self._rewrite(tk.unparse(toks), self._rw_return)

    def finish(self) -> bytes:
        """The header to queue: generated fields first, then the kept ones.

        Also settles the envelope sender when neither -f nor Return-Path did.
        """
        seen = self._seen
        self.resent = bool(seen & _RESENT_MARKERS)
        if self.sender is None:
            self._default_return_path()
        out: list[bytes] = []
        prefix = b"Resent-" if self.resent else b""
        pre = "resent-" if self.resent else ""
        if pre + "date" not in seen:
            out.append(prefix + date_field(self.now))
        if pre + "message-id" not in seen:
            out.append(prefix + message_id_field(self.now, self.pid, self.s.idhost))
        if pre + "from" not in seen:
            out.append(prefix + self._default_from())
        if pre + "to" not in seen and pre + "cc" not in seen:
            out.append(prefix + b"Cc: recipient list not shown: ;\n")
        if not self.resent:
            out.append(self._mail_followup_to())
        out.extend(self._saved)
        return b"".join(out)

    def _mail_followup_to(self) -> bytes:
        mft = self.s.mft
        if mft is None or "mail-followup-to" in self._seen:
            return b""
        if not any(a.lower() in mft for a in self._tocc):
            return b""
        return (
            b"Mail-Followup-To: "
            + b",\n  ".join(tk.quote2(a) for a in reversed(self._tocc))
            + b"\n"
        )

    def return_path_line(self) -> bytes:
        """qmail-inject -n prints this before the header."""
        return b"Return-Path: <" + tk.quote2(self.sender or b"") + b">\n"

    def recipients(self, *, from_header: bool) -> list[bytes]:
        """The envelope recipients: arguments, then the header's when asked."""
        rcpts = list(self.arg_recipients)
        if from_header:
            rcpts += self._hrr if self.resent else self._hr
        return rcpts


# -- splitting a message into header fields and body (qmail's headerbody) ---------

MAX_FIELD_BYTES = 1 << 20  # one header field, continuation lines included
MAX_HEADER_BYTES = 16 << 20  # the whole header


@dataclass(frozen=True, slots=True)
class Split:
    fields: list[bytes]
    body_start: bytes  # b"" when the input ended inside the header


def read_header(
    readline: Callable[[int], bytes],
    *,
    max_field: int = MAX_FIELD_BYTES,
    max_header: int = MAX_HEADER_BYTES,
) -> Split:
    """Read header fields until the blank line, a line that is not a field, or EOF.

    readline(limit) returns one line (at most limit bytes, b"" at EOF). A final
    line without a newline gets one. A leading ``From `` line becomes an
    ``MBOX-Line:`` field. A line that is not a field ends the header: the body
    then starts with a blank line and that line. Raises InjectError (100) when
    a field or the header is over its limit.
    """
    fields: list[bytes] = []
    total = 0
    line: bytes | None = None

    def next_line() -> bytes:
        got = readline(max_field + 1)
        if len(got) > max_field:
            raise InjectError(f"header line longer than {max_field} bytes")
        if got and not got.endswith(b"\n"):
            got += b"\n"
        return got

    while True:
        nxt = next_line()
        total += len(nxt)
        if total > max_header:
            raise InjectError(f"header longer than {max_header} bytes")
        if not nxt:
            if line is not None:
                fields.append(line)
            return Split(fields, b"")
        if line is not None:
            if nxt[:1] in (b" ", b"\t"):
                line += nxt
                if len(line) > max_field:
                    raise InjectError(f"header field longer than {max_field} bytes")
                continue
            fields.append(line)
        if nxt == b"\n":
            return Split(fields, b"\n")
        if nxt.startswith(b"From "):
            line = b"MBOX-Line: " + nxt
        elif valid_field(nxt):
            line = nxt
        else:
            return Split(fields, b"\n" + nxt)
