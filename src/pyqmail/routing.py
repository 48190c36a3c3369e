"""Which recipients are local, and as what local part: qmail-send's rewriting (qmail-files §3).

Pure. Shared by send (which routes) and the recipient check (which refuses
unknown local recipients at RCPT time), so both always agree.
"""

from __future__ import annotations

from pyqmail.config import Home, SendConfig
from pyqmail.formats.control import domain_keys


def classify(rcpt: bytes, cfg: SendConfig) -> tuple[str, bytes]:
    """("local" | "remote", rewritten address)."""
    if b"@" not in rcpt:
        rcpt = rcpt + b"@" + cfg.envnoathost.encode("utf-8", "surrogateescape")
    local, _, dom = rcpt.rpartition(b"@")
    domain = dom.decode("utf-8", "surrogateescape").lower()
    while domain in cfg.percenthack and b"%" in local:
        pct = local.rfind(b"%")
        local, dom = local[:pct], local[pct + 1 :]
        rcpt = local + b"@" + dom
        domain = dom.decode("utf-8", "surrogateescape").lower()
    if domain in cfg.locals:
        return "local", rcpt
    user_key = f"{local.decode('utf-8', 'surrogateescape').lower()}@{domain}"
    for key in [user_key, *domain_keys(domain), ""]:
        if key in cfg.virtualdomains:
            prepend = cfg.virtualdomains[key]
            if not prepend:
                return "remote", rcpt
            return "local", prepend.encode("utf-8", "surrogateescape") + b"-" + rcpt
    return "remote", rcpt


class LocalView:
    """send's routing controls as read at start (and again at reload()), for
    a component that only needs to know whether a recipient is local.

    smtpd asks the lookup service about local recipients only: for any other
    address its answer is always yes, and a round trip to another process
    per RCPT is most of the cost of relaying a message. Unreadable controls
    leave no view (None): then every recipient is asked about, as before.
    """

    def __init__(self, home: Home) -> None:
        self.home = home
        self.cfg: SendConfig | None = None
        self.reload()

    def reload(self) -> None:
        try:
            self.cfg = SendConfig.load(self.home)
        except (OSError, ValueError):
            self.cfg = None

    def may_be_local(self, rcpt: bytes) -> bool:
        return self.cfg is None or classify(rcpt, self.cfg)[0] == "local"
