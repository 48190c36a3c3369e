"""qmail's getopt (djb's subgetopt): how sendmail and qmail-inject read options.

Options end at the first argument that does not start with '-', at a lone
'-' (kept as an argument) or at '--' (dropped). An option that takes a value
takes the rest of its word or, when that is empty, the next word. Arguments
are never reordered.
"""

from __future__ import annotations

PROBLEM = "?"


class GetOpt:
    def __init__(self, argv: list[str], opts: str) -> None:
        self.argv = argv
        self.opts = opts
        self.ind = 1
        self.pos = 0
        self.arg: str | None = None
        self.problem = ""

    def next(self) -> str | None:
        """The next option letter, PROBLEM for an unknown one, None when done."""
        argv = self.argv
        self.arg = None
        if self.ind >= len(argv):
            return None
        if self.pos and self.pos >= len(argv[self.ind]):
            self.ind += 1
            self.pos = 0
            if self.ind >= len(argv):
                return None
        if not self.pos:
            word = argv[self.ind]
            if not word.startswith("-"):
                return None
            self.pos = 1
            if word in ("-", "--") or word.startswith("--"):
                if len(word) > 1:
                    self.ind += 1
                self.pos = 0
                return None
        word = argv[self.ind]
        c = word[self.pos]
        self.pos += 1
        at = self.opts.find(c)
        if c == ":" or at < 0:
            self.problem = c
            return PROBLEM
        if self.opts[at + 1 : at + 2] == ":":
            value = word[self.pos :]
            self.ind += 1
            self.pos = 0
            if not value:
                if self.ind >= len(argv):
                    self.problem = c
                    return PROBLEM
                value = argv[self.ind]
                self.ind += 1
            self.arg = value
        return c

    def skip_rest(self) -> None:
        """Ignore what is left of the current word (sendmail's -E and -J)."""
        if self.pos:
            self.pos = len(self.argv[self.ind])

    @property
    def rest(self) -> list[str]:
        """The arguments after the options."""
        if self.pos and self.ind < len(self.argv) and self.pos >= len(self.argv[self.ind]):
            return self.argv[self.ind + 1 :]
        return self.argv[self.ind :]
