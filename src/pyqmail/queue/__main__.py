"""python -m pyqmail.queue: run the queue writer."""

from __future__ import annotations

from pyqmail.config import Home, apply_syncmode
from pyqmail.queue.writer import serve
from pyqmail.unix import compargs, loop
from pyqmail.unix.logfmt import set_component


def main(argv: list[str] | None = None) -> int:
    args = compargs.parse("pyqmail-queue", ("--home", "--fd"), argv)
    set_component("queue")
    home = Home.from_env(args.home)
    apply_syncmode(home)
    loop.run(serve(home, args.fd[-1] if args.fd else None))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
