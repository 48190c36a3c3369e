"""python -m pyqmail.send"""

from __future__ import annotations

from pyqmail.send.scheduler import serve
from pyqmail.unix.entry import component_main

if __name__ == "__main__":
    raise SystemExit(component_main("send", serve))
