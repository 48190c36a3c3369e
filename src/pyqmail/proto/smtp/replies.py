"""SMTP replies: one value type and the fixed texts qmail-smtpd uses.

Texts follow qmail-smtpd word for word where qmail has the reply
(reference/qmail-protocols.md §9.2), so log analysers and admins see what
they know. Enhanced status codes go in qmail's "(#x.y.z)" suffix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache

MIN_CODE = 200
MAX_CODE = 599


@dataclass(frozen=True, slots=True)
class Reply:
    """An SMTP reply: a three-digit code and text, "\\n" between lines.

    Raises ValueError for a code outside 200..599 or a CR in the text: a CR
    (or a "\\n" smuggled into one line) would let the text forge extra reply
    lines, RFC 5321 §4.2.
    """

    code: int
    text: str
    # the wire form, made once: the fixed replies below are sent over and over
    _wire: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if type(self.code) is not int or not MIN_CODE <= self.code <= MAX_CODE:
            raise ValueError(f"reply code {self.code!r} is not in {MIN_CODE}..{MAX_CODE}")
        if "\r" in self.text or "\0" in self.text:
            raise ValueError("reply text must not contain CR or NUL")
        lines = self.text.split("\n")
        out = [b"%d-%s\r\n" % (self.code, line.encode("utf-8")) for line in lines[:-1]]
        out.append(b"%d %s\r\n" % (self.code, lines[-1].encode("utf-8")))
        object.__setattr__(self, "_wire", b"".join(out))

    @property
    def is_positive(self) -> bool:
        """2xx: the command succeeded."""
        return 200 <= self.code < 300

    def to_bytes(self) -> bytes:
        """Wire form: "250-a\\r\\n250 b\\r\\n" (RFC 5321 §4.2.1 multi-line)."""
        return self._wire


# qmail-smtpd's own replies (§9.2).
OK = Reply(250, "ok")
FLUSHED = Reply(250, "flushed")
GO_AHEAD = Reply(354, "go ahead")
BYE = Reply(221, "bye")
VRFY = Reply(252, "send some mail, i'll try my best")
HELP = Reply(214, "netqmail home page: http://qmail.org/netqmail")
UNIMPLEMENTED = Reply(502, "unimplemented (#5.5.1)")
MAIL_FIRST = Reply(503, "MAIL first (#5.5.1)")
RCPT_FIRST = Reply(503, "RCPT first (#5.5.1)")
ADDRESS_TOO_LONG = Reply(555, "syntax error (#5.5.4)")
TOO_MANY_HOPS = Reply(554, "too many hops, this message is looping (#5.4.6)")
TOO_BIG = Reply(552, "sorry, that message size exceeds my databytes limit (#5.3.4)")
BARE_LF = Reply(451, "See http://pobox.com/~djb/docs/smtplf.html.")
TIMEOUT = Reply(451, "timeout (#4.4.2)")
QQT_FAILURE = Reply(451, "qqt failure (#4.3.0)")
OUT_OF_MEMORY = Reply(421, "out of memory (#4.3.0)")
CONTROLS_UNREADABLE = Reply(421, "unable to read controls (#4.3.0)")

# Replies pyqmail adds: the engine's stricter checks and the extensions
# qmail lacks (BDAT, STARTTLS, AUTH).
SYNTAX_ERROR = Reply(501, "syntax error (#5.5.4)")
BAD_ADDRESS = Reply(501, "malformed address (#5.1.3)")
BAD_PARAMS = Reply(501, "malformed parameters (#5.5.4)")
HELO_ARGUMENT = Reply(501, "HELO/EHLO requires a domain name (#5.5.4)")
MAIL_SYNTAX = Reply(501, "use MAIL FROM:<address> (#5.5.4)")
RCPT_SYNTAX = Reply(501, "use RCPT TO:<address> (#5.5.4)")
EMPTY_RECIPIENT = Reply(501, "empty recipient (#5.1.3)")
LINE_TOO_LONG = Reply(500, "line too long (#5.5.2)")
TOO_MANY_RCPTS = Reply(452, "too many recipients (#4.5.3)")
TOO_MANY_ERRORS = Reply(421, "too many bad commands, closing connection (#4.7.0)")
BDAT_SYNTAX = Reply(421, "malformed BDAT size, closing connection (#4.5.4)")
DATA_AFTER_BDAT = Reply(503, "DATA not allowed after BDAT (#5.5.1)")
TLS_READY = Reply(220, "ready to start TLS")
TLS_UNAVAILABLE = Reply(454, "TLS not available (#4.3.0)")
TLS_ACTIVE = Reply(503, "TLS already active (#5.5.1)")
AUTH_OK = Reply(235, "ok, go ahead (#2.0.0)")
AUTH_FAILED = Reply(535, "authorization failed (#5.7.8)")
AUTH_CANCELLED = Reply(501, "authentication cancelled (#5.0.0)")
AUTH_ALREADY = Reply(503, "you are already authenticated (#5.5.1)")
AUTH_IN_TRANSACTION = Reply(503, "no AUTH during a mail transaction (#5.5.1)")


_SUFFIX = re.compile(r" ?\(#([245]\.[0-9]{1,3}\.[0-9]{1,3})\)\Z")


@lru_cache(maxsize=256)  # the same few replies, once per command of every EHLO session
def with_status_code(reply: Reply, default: str | None = None) -> Reply:
    """The reply with an RFC 2034 enhanced status code before each line's text.

    Used once the client has seen ENHANCEDSTATUSCODES in our EHLO reply. The
    code comes from qmail's "(#x.y.z)" suffix when the text has one (the
    suffix is then dropped), else from default, else "class.0.0". 3xx replies
    carry none (RFC 2034 §3).
    """
    if 300 <= reply.code < 400:
        return reply
    lines = reply.text.split("\n")
    found = _SUFFIX.search(lines[-1])
    status = found.group(1) if found else default
    if status is None or status[0] != str(reply.code)[0]:
        status = f"{reply.code // 100}.0.0"
    if found:
        lines[-1] = lines[-1][: found.start()]
    return Reply(reply.code, "\n".join(f"{status} {line}".rstrip() for line in lines))
