"""Maildir file names (cr.yp.to/proto/maildir.html).

pyqmail names a delivery after the queued message and recipient it comes
from, not after the delivering process: a retried delivery after a crash then
finds its own earlier file instead of writing a second copy (DESIGN 1a,
exactly-once local delivery).
"""

from __future__ import annotations


def safe_host(host: str) -> str:
    """Hostname part: ``/`` and ``:`` are escaped as the spec says."""
    return host.replace("/", "\\057").replace(":", "\\072")


def delivery_name(birth: int, msg_id: int, rcpt_index: int, host: str) -> str:
    """``BIRTH.QmsgRidx.host``: deterministic per (message, recipient).

    birth (queueing time) keeps names unique when message ids are reused
    after a message leaves the queue.
    """
    return f"{birth}.Q{msg_id}R{rcpt_index}.{safe_host(host)}"


def unique_of(name: str) -> str:
    """Strip a ``:2,FLAGS`` info suffix: the part a reader never changes."""
    return name.split(":", 1)[0]
