"""qmail-qread: list queued messages and their recipients, in qmail's format.

Read-only: it looks at info/, local/, remote/ and bounce/ and never writes,
so it is safe while the MTA runs. Messages still in todo/ (not yet
preprocessed) are not listed, as in qmail.
"""

from __future__ import annotations

import os
import sys

from pyqmail.config import SPLIT, Home
from pyqmail.formats import envelope as env_fmt
from pyqmail.formats.dates import qread_date


def describe(home: Home, msg_id: int) -> list[str] | None:
    try:
        st = os.stat(home.split_path("info", msg_id))
        with open(home.split_path("info", msg_id), "rb") as fh:
            info = env_fmt.parse_todo(fh.read(1 << 16))
        size = os.stat(home.split_path("mess", msg_id)).st_size
    except (OSError, env_fmt.EnvelopeError):
        return None
    sender = info.sender.decode("utf-8", "replace")
    head = f"{qread_date(st.st_mtime)}  #{msg_id}  {size}  <{sender}>"
    if os.path.exists(home.q("bounce", str(msg_id))):
        head += " bouncing"
    lines = [head]
    for kind in ("local", "remote"):
        try:
            with open(home.split_path(kind, msg_id), "rb") as fh:
                records = env_fmt.parse_channel(fh.read())
        except (OSError, env_fmt.EnvelopeError):
            continue
        for done, addr in records:
            prefix = "  done" if done else ""
            lines.append(f"{prefix}\t{kind}\t{addr.decode('utf-8', 'replace')}")
    return lines


def main() -> int:
    home = Home.from_env()
    try:
        ids = sorted(
            int(name)
            for sub in range(SPLIT)
            for name in os.listdir(home.q("info", str(sub)))
            if name.isdigit()
        )
    except OSError as exc:
        print(f"qmail-qread: fatal: unable to read the queue: {exc}", file=sys.stderr)
        return 111
    for msg_id in ids:
        lines = describe(home, msg_id)
        if lines:
            print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
