"""users/cdb: qmail-newu's key/value layout and qmail-lspawn's lookup over it. Pure.

The cdb file itself is read and written by a cdb library; this module only
says which keys and values go in and how a local part is looked up
(qmail-files §4):

* ``=local`` lines: key ``!`` + lowercased local + NUL;
* ``+loc`` lines: key ``!`` + lowercased loc (no NUL);
* value: ``user\\0uid\\0gid\\0home\\0dash\\0ext\\0``;
* the empty key holds every distinct last byte of the ``+`` keys, so a
  lookup tries a prefix only when it could be a ``+`` key.
"""

from __future__ import annotations

from collections.abc import Callable

from pyqmail.formats.assign import Assign, UserMatch

MAX_FIELD_BYTES = 4096


class UsersCdbError(ValueError):
    pass


def _b(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def records(assign: Assign) -> list[tuple[bytes, bytes]]:
    """The (key, value) records qmail-newu writes for a parsed users/assign.

    Duplicate keys are already resolved (the first line wins, as cdb_find
    returns the first record), so each key appears once.
    """
    out: list[tuple[bytes, bytes]] = []
    wild = bytearray()
    for table, kind in ((assign.exact, "="), (assign.prefix, "+")):
        for key, a in table.items():
            value = b"\0".join(
                [_b(a.user), b"%d" % a.uid, b"%d" % a.gid, _b(a.home), _b(a.dash), _b(a.ext), b""]
            )
            k = b"!" + _b(key).lower()
            if kind == "=":
                out.append((k + b"\0", value))
            else:
                out.append((k, value))
                if k[-1] not in wild:
                    wild.append(k[-1])
    out.insert(0, (b"", bytes(wild)))
    return out


def parse_value(data: bytes, ext_tail: bytes = b"") -> UserMatch:
    """A users/cdb value as a UserMatch; ext_tail is appended for a ``+`` hit."""
    fields = data.split(b"\0")
    if len(fields) != 7 or fields[6] != b"" or any(len(f) > MAX_FIELD_BYTES for f in fields):
        raise UsersCdbError("users/cdb: malformed record")
    user, uid, gid, home, dash, ext = (f.decode("utf-8", "surrogateescape") for f in fields[:6])
    if not (uid.isascii() and uid.isdigit() and gid.isascii() and gid.isdigit()):
        raise UsersCdbError("users/cdb: uid and gid must be numbers")
    tail = ext_tail.decode("utf-8", "surrogateescape")
    return UserMatch(user, int(uid), int(gid), home, dash, ext + tail)


def lookup(get: Callable[[bytes], bytes | None], local: bytes) -> UserMatch | None:
    """qmail-lspawn's users/cdb search: exact key, then prefixes, longest first.

    Lowercasing is ASCII-only (qmail's case_lowerb), so prefix lengths match
    the original-case local part whose remainder becomes the ext.
    """
    lower = b"!" + local.lower()
    hit = get(lower + b"\0")
    if hit is not None:
        return parse_value(hit)
    wild = get(b"") or b""
    for cut in range(len(lower), 0, -1):
        if cut > 1 and lower[cut - 1] not in wild:
            continue
        hit = get(lower[:cut])
        if hit is not None:
            return parse_value(hit, local[cut - 1 :])
    return None
