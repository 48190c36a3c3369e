"""``pyqmail check``'s part for local delivery: control/quotas and users/cdb."""

from __future__ import annotations

import os

from pyqmail.config import Home, read_control
from pyqmail.formats.control import ControlError
from pyqmail.local.quota import parse_quotas


def check_local(home: Home) -> list[str]:
    problems: list[str] = []
    try:
        parse_quotas(read_control(home, "quotas"), path=home.control("quotas"))
    except ControlError as exc:
        problems.append(str(exc))
    try:
        assign_mtime = os.stat(home.assign).st_mtime_ns
        cdb_mtime = os.stat(home.users_cdb).st_mtime_ns
    except FileNotFoundError:
        return problems
    if cdb_mtime < assign_mtime:
        problems.append(
            f"{home.users_cdb}:0: older than users/assign; run qmail-newu to make the edit live"
        )
    return problems
