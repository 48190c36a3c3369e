"""qmail-qread: list queued messages and their recipients, in qmail's format.

Read-only: it looks at info/, local/, remote/ and bounce/ and never writes,
so it is safe while the MTA runs. Messages still in todo/ (not yet
preprocessed) are not listed, as in qmail.
"""

from __future__ import annotations

import sys

from pyqmail.config import Home
from pyqmail.listing import describe, queued_ids


def main() -> int:
    home = Home.from_env()
    try:
        ids = queued_ids(home)
    except OSError as exc:
        print(f"qmail-qread: fatal: unable to read the queue: {exc}", file=sys.stderr)
        return 111
    for msg_id in ids:
        lines = describe(home, msg_id, show_held=False)
        if lines:
            print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
