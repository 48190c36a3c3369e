"""TLS contexts for STARTTLS, one per policy, built once.

Opportunistic TLS (``may``, ``encrypt``) checks no certificate: an attacker
who can strip STARTTLS could as well present any certificate, and refusing
self-signed servers would only push mail back to plain text (RFC 7435).
``verify`` checks the chain against the policy's CA file (or the system
store) and the host name connected to.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyqmail.formats.tlspolicy import TlsLevel, TlsPolicy

if TYPE_CHECKING:
    import ssl


class TlsContexts:
    def __init__(self, clientcert: str | None = None) -> None:
        self.clientcert = clientcert
        self._made: dict[TlsPolicy, ssl.SSLContext] = {}

    def get(self, policy: TlsPolicy) -> ssl.SSLContext:
        ctx = self._made.get(policy)
        if ctx is None:
            ctx = self._make(policy)
            self._made[policy] = ctx
        return ctx

    def _make(self, policy: TlsPolicy) -> ssl.SSLContext:
        # OpenSSL is loaded here, at the first STARTTLS a remote offers:
        # rspawn starts without it (unix/notls.py)
        from pyqmail.unix.notls import ssl_later

        ssl_later()
        import ssl

        if policy.level is TlsLevel.VERIFY:
            ctx = ssl.create_default_context(cafile=policy.cafile)
        else:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if self.clientcert:
            ctx.load_cert_chain(self.clientcert)  # netqmail-tls: control/clientcert.pem
        return ctx
