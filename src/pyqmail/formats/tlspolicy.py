"""control/tlsdestinations: how hard remote delivery insists on TLS, per domain.

Pure: callers hand in the file's text. One rule a line, ``#`` comments::

    example.com:verify              # TLS, certificate checked against the system CAs
    .bank.example:verify:/etc/ssl/bank-ca.pem
    partner.example:encrypt         # TLS required, certificate not checked
    broken.example:none             # never STARTTLS (a server whose TLS is broken)
    :may                            # the default for every other domain

The domain is matched as in smtproutes: the exact name, then ``.suffix``
rules longest first, then the empty rule. ``may`` (the default without a
rule) is opportunistic: STARTTLS when offered, plain text when not or when
the handshake fails. ``encrypt`` and ``verify`` defer the mail rather than
send it in clear; ``verify`` checks the certificate against cafile (or the
system store) and the name of the host connected to (the MX or relay name),
as the netqmail TLS patch does with control/tlshosts/HOST.pem.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from pyqmail.formats.control import ControlError, domain_keys


class TlsLevel(enum.Enum):
    NONE = "none"
    MAY = "may"
    ENCRYPT = "encrypt"
    VERIFY = "verify"


@dataclass(frozen=True, slots=True)
class TlsPolicy:
    level: TlsLevel = TlsLevel.MAY
    cafile: str | None = None

    @property
    def required(self) -> bool:
        return self.level in (TlsLevel.ENCRYPT, TlsLevel.VERIFY)


DEFAULT_POLICY = TlsPolicy()
MAX_RULES = 100000


def parse_tlsdestinations(text: str | None, *, path: str) -> dict[str, TlsPolicy]:
    """Rules keyed by lowercased domain ("" = default); ControlError names the line."""
    out: dict[str, TlsPolicy] = {}
    if text is None:
        return out
    for lineno, raw in enumerate(text.split("\n"), 1):
        line = raw.rstrip(" \t\r")
        if not line or line.startswith("#"):
            continue
        if len(out) >= MAX_RULES:
            raise ControlError(path, lineno, f"more than {MAX_RULES} rules")
        domain, sep, rest = line.partition(":")
        if not sep:
            raise ControlError(path, lineno, "expected domain:level[:cafile]")
        word, _, cafile = rest.partition(":")
        try:
            level = TlsLevel(word.strip().lower())
        except ValueError:
            raise ControlError(
                path, lineno, f"unknown level {word!r} (none, may, encrypt, verify)"
            ) from None
        if cafile and level is not TlsLevel.VERIFY:
            raise ControlError(path, lineno, "a CA file only makes sense with verify")
        out[domain.strip().lower()] = TlsPolicy(level, cafile or None)
    return out


def policy_for(domain: str, rules: dict[str, TlsPolicy]) -> TlsPolicy:
    for key in [*domain_keys(domain.lower()), ""]:
        if key in rules:
            return rules[key]
    return DEFAULT_POLICY
