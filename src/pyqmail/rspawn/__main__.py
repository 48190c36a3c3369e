"""python -m pyqmail.rspawn"""

from __future__ import annotations

from pyqmail.rspawn.main import serve
from pyqmail.unix.entry import component_main

if __name__ == "__main__":
    raise SystemExit(component_main("rspawn", serve))
