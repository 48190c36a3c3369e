"""users/password: the scrypt hash format, strict parsing, atomic rewrites."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyqmail.auth import pwfile
from pyqmail.formats.control import ControlError


def test_hash_round_trip_and_wrong_password() -> None:
    text = pwfile.hash_password(b"s3cret", ln=10)
    assert text.startswith("$scrypt$ln=10,r=8,p=1$")
    h = pwfile.parse_hash(text)
    assert pwfile.check_hash(b"s3cret", h)
    assert not pwfile.check_hash(b"s3cret ", h)
    assert not pwfile.check_hash(b"", h)


def test_same_password_gets_a_fresh_salt() -> None:
    assert pwfile.hash_password(b"x", ln=10) != pwfile.hash_password(b"x", ln=10)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "plain",
        "$scrypt$ln=14,r=8$c2FsdHNhbHQ$a2V5a2V5a2V5a2V5a2V5a2V5",
        "$scrypt$ln=40,r=8,p=1$c2FsdHNhbHQ$a2V5a2V5a2V5a2V5a2V5a2V5",  # 2**40: refused
        "$scrypt$ln=14,r=8,p=1,ln=14$c2FsdHNhbHQ$a2V5a2V5a2V5a2V5a2V5a2V5",
        "$scrypt$ln=14,r=8,p=1$!!!$a2V5a2V5a2V5a2V5a2V5a2V5",
        "$scrypt$ln=14,r=8,p=1$c2FsdHNhbHQ$a2V5",  # key too short
        "$bcrypt$ln=14,r=8,p=1$c2FsdHNhbHQ$a2V5a2V5a2V5a2V5a2V5a2V5",
    ],
)
def test_malformed_hashes_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        pwfile.parse_hash(bad)


@settings(max_examples=200)
@given(st.text(max_size=200))
def test_garbage_lines_raise_only_control_error(junk: str) -> None:
    error = ""
    try:
        pwfile.parse_password_file(junk, path="users/password")
    except ControlError as exc:
        error = str(exc)
    assert not error or error.startswith("users/password:")


def test_bad_line_is_named_by_file_and_line() -> None:
    good = "alice:" + pwfile.hash_password(b"a", ln=10)
    with pytest.raises(ControlError, match=r"^pw:3: expected NAME:HASH"):
        pwfile.parse_password_file(f"# users\n{good}\nbob\n", path="pw")
    with pytest.raises(ControlError, match=r"^pw:2: alice appears twice"):
        pwfile.parse_password_file(f"{good}\n{good}\n", path="pw")
    with pytest.raises(ControlError, match=r"^pw:1: 'Bob' is not a usable"):
        pwfile.parse_password_file("Bob:" + good.split(":", 1)[1], path="pw")
    with pytest.raises(ControlError, match=r"^pw:1: line longer"):
        pwfile.parse_password_file("a:" + "x" * 2000, path="pw")


def test_set_password_adds_replaces_and_keeps_others(tmp_path: Path) -> None:
    home = str(tmp_path)
    pwfile.set_password(home, "alice", "one")
    pwfile.set_password(home, "bob", b"two")
    assert pwfile.verify(home, "alice", "one")
    assert pwfile.verify(home, "bob", "two")
    pwfile.set_password(home, "alice", "three")
    assert not pwfile.verify(home, "alice", "one")
    assert pwfile.verify(home, "alice", "three")
    assert pwfile.verify(home, "bob", "two")
    assert not pwfile.verify(home, "carol", "two")
    path = Path(pwfile.password_path(home))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [ln.split(":")[0] for ln in path.read_text().splitlines()] == ["bob", "alice"]
    assert not [p for p in os.listdir(tmp_path / "users") if ".tmp" in p]


def test_broken_file_is_never_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "users" / "password"
    path.parent.mkdir()
    path.write_text("alice:nonsense\n")
    with pytest.raises(ControlError, match="password:1:"):
        pwfile.set_password(str(tmp_path), "bob", "x")
    assert path.read_text() == "alice:nonsense\n"
    with pytest.raises(ControlError):
        pwfile.verify(str(tmp_path), "alice", "x")


@pytest.mark.parametrize("password", ["", "a\nb", "a\0b"])
def test_unstorable_passwords_are_refused(tmp_path: Path, password: str) -> None:
    with pytest.raises(ValueError):
        pwfile.set_password(str(tmp_path), "alice", password)
