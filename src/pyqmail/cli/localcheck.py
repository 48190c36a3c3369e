"""``pyqmail check``'s warning for local delivery: a users/cdb older than users/assign.

(control/quotas is checked with the other control files, in controlfiles.py.)
"""

from __future__ import annotations

import os

from pyqmail.config import Home


def check_local(home: Home) -> list[str]:
    try:
        assign_mtime = os.stat(home.assign).st_mtime_ns
        cdb_mtime = os.stat(home.users_cdb).st_mtime_ns
    except FileNotFoundError:
        return []
    if cdb_mtime < assign_mtime:
        return [
            f"{home.users_cdb}:0: older than users/assign; run qmail-newu to make the edit live"
        ]
    return []
