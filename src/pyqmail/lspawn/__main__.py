"""python -m pyqmail.lspawn"""

from __future__ import annotations

from pyqmail.lspawn.main import serve
from pyqmail.unix.entry import component_main

if __name__ == "__main__":
    raise SystemExit(component_main("lspawn", serve))
