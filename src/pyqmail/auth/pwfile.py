"""HOME/users/password: one ``NAME:HASH`` line per virtual user.

HASH is ``$scrypt$ln=14,r=8,p=1$<salt>$<key>``, salt and key in standard
base64 without padding, key from hashlib.scrypt (N = 2**ln). The file is
rewritten atomically (temp file, fsync, rename, fsync of users/) with mode
0600, under an flock on users/ so two writers never lose each other's lines.
A malformed line makes the whole file unusable: the error names file and line.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass

from pyqmail.formats.control import ControlError
from pyqmail.unix.durable import write_all

MAX_FILE_BYTES = 16 << 20
MAX_LINE_BYTES = 1024
MAX_NAME_BYTES = 64
MAX_PASSWORD_BYTES = 1024
SALT_BYTES = 16
KEY_BYTES = 32
DEFAULT_LN, DEFAULT_R, DEFAULT_P = 14, 8, 1
# bounds a hash read from the file may ask for: a forged line must not make
# us spend gigabytes or minutes
LN_RANGE, R_RANGE, P_RANGE = (10, 20), (1, 32), (1, 16)
SCRYPT_MAXMEM = 256 << 20


@dataclass(frozen=True, slots=True)
class ScryptHash:
    ln: int
    r: int
    p: int
    salt: bytes
    key: bytes


def password_path(home: str) -> str:
    return os.path.join(home, "users", "password")


def valid_name(name: str) -> bool:
    """The names ``pyqmail adduser`` makes: lowercase, no ':', '/', space or NUL."""
    return (
        0 < len(name.encode("utf-8", "surrogateescape")) <= MAX_NAME_BYTES
        and not any(c in name for c in ":/\n\r\0 \t")
        and not name.startswith(".")
        and name == name.lower()
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    if not text or len(text) % 4 == 1:
        raise ValueError("bad base64")
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def _derive(password: bytes, h: ScryptHash) -> bytes:
    return hashlib.scrypt(
        password, salt=h.salt, n=1 << h.ln, r=h.r, p=h.p, maxmem=SCRYPT_MAXMEM, dklen=len(h.key)
    )


def format_hash(h: ScryptHash) -> str:
    return f"$scrypt$ln={h.ln},r={h.r},p={h.p}${_b64(h.salt)}${_b64(h.key)}"


def parse_hash(text: str) -> ScryptHash:
    """Strict reader for format_hash's output; ValueError says what is wrong."""
    parts = text.split("$")
    if len(parts) != 5 or parts[0] or parts[1] != "scrypt":
        raise ValueError("hash is not $scrypt$PARAMS$SALT$KEY")
    params: dict[str, int] = {}
    for item in parts[2].split(","):
        key, sep, value = item.partition("=")
        if not sep or key not in ("ln", "r", "p") or key in params or not value.isdigit():
            raise ValueError(f"bad scrypt parameter {item!r}")
        if len(value) > 3:
            raise ValueError(f"scrypt parameter {item!r} out of range")
        params[key] = int(value)
    if set(params) != {"ln", "r", "p"}:
        raise ValueError("scrypt parameters must be ln, r and p")
    for key, (lo, hi) in (("ln", LN_RANGE), ("r", R_RANGE), ("p", P_RANGE)):
        if not lo <= params[key] <= hi:
            raise ValueError(f"scrypt {key}={params[key]} is outside {lo}..{hi}")
    try:
        salt, key_bytes = _unb64(parts[3]), _unb64(parts[4])
    except (ValueError, binascii.Error):
        raise ValueError("salt or key is not base64") from None
    if not 8 <= len(salt) <= 64 or not 16 <= len(key_bytes) <= 64:
        raise ValueError("salt or key has a bad length")
    return ScryptHash(params["ln"], params["r"], params["p"], salt, key_bytes)


def hash_password(password: bytes, *, ln: int = DEFAULT_LN) -> str:
    if len(password) > MAX_PASSWORD_BYTES:
        raise ValueError(f"password is longer than {MAX_PASSWORD_BYTES} bytes")
    h = ScryptHash(ln, DEFAULT_R, DEFAULT_P, secrets.token_bytes(SALT_BYTES), b"\0" * KEY_BYTES)
    return format_hash(ScryptHash(h.ln, h.r, h.p, h.salt, _derive(password, h)))


def check_hash(password: bytes, stored: ScryptHash) -> bool:
    if len(password) > MAX_PASSWORD_BYTES:
        return False
    return hmac.compare_digest(_derive(password, stored), stored.key)


def parse_password_file(text: str, *, path: str) -> dict[str, ScryptHash]:
    """Every line ``NAME:HASH``; blank lines and ``#`` comments allowed."""
    out: dict[str, ScryptHash] = {}
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip() or line.startswith("#"):
            continue
        if len(line.encode("utf-8", "surrogateescape")) > MAX_LINE_BYTES:
            raise ControlError(path, number, f"line longer than {MAX_LINE_BYTES} bytes")
        name, sep, stored = line.partition(":")
        if not sep:
            raise ControlError(path, number, "expected NAME:HASH")
        if not valid_name(name):
            raise ControlError(path, number, f"{name!r} is not a usable user name")
        if name in out:
            raise ControlError(path, number, f"{name} appears twice")
        try:
            out[name] = parse_hash(stored)
        except ValueError as exc:
            raise ControlError(path, number, str(exc)) from None
    return out


def _read(path: str) -> str | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as fh:
        data = fh.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise ControlError(path, 0, f"larger than {MAX_FILE_BYTES} bytes")
    return data.decode("utf-8", "surrogateescape")


def load(home: str) -> dict[str, ScryptHash]:
    """The parsed file; empty when there is none. ControlError when broken."""
    path = password_path(home)
    text = _read(path)
    return {} if text is None else parse_password_file(text, path=path)


def lookup(home: str, user: str) -> ScryptHash | None:
    return load(home).get(user) if valid_name(user) else None


# A hash to spend the same time on when the user is unknown, so response
# time does not tell which names exist.
DECOY = ScryptHash(DEFAULT_LN, DEFAULT_R, DEFAULT_P, b"pyqmail-decoy-salt", b"\0" * KEY_BYTES)


def verify(home: str, user: str, password: str | bytes) -> bool:
    """True only if user has a line and the password matches (constant time)."""
    pw = password.encode("utf-8", "surrogateescape") if isinstance(password, str) else password
    stored = lookup(home, user)
    if stored is None:
        check_hash(pw[:MAX_PASSWORD_BYTES], DECOY)
        return False
    return check_hash(pw, stored)


def set_password(home: str, user: str, password: str | bytes) -> None:
    """Add or replace user's line; the file is replaced atomically, mode 0600."""
    if not valid_name(user):
        raise ValueError(f"{user!r} is not a usable user name")
    pw = password.encode("utf-8", "surrogateescape") if isinstance(password, str) else password
    if not pw:
        raise ValueError("empty password")
    if b"\0" in pw or b"\n" in pw:
        raise ValueError("password holds a NUL or newline")
    new_line = f"{user}:{hash_password(pw)}"
    users_dir = os.path.join(home, "users")
    os.makedirs(users_dir, mode=0o755, exist_ok=True)
    path = password_path(home)
    dfd = os.open(users_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(dfd, fcntl.LOCK_EX)
        text = _read(path) or ""
        parse_password_file(text, path=path)  # never rewrite a file we cannot read
        lines = [ln for ln in text.split("\n") if ln and ln.partition(":")[0] != user]
        lines.append(new_line)
        tmp = f"{path}.tmp{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            write_all(fd, ("\n".join(lines) + "\n").encode("utf-8", "surrogateescape"))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
        os.fsync(dfd)
    finally:
        os.close(dfd)
