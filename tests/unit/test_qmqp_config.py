"""control/qmqpservers and the listeners' tcprules files written by init (issue #7)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pyqmail.config import Home, QmqpcConfig, parse_server
from pyqmail.formats.control import ControlError
from pyqmail.formats.tcprules import match, parse_rules
from tests.harness import init_home, pyqmail, write_control


@pytest.mark.parametrize(
    ("line", "want"),
    [
        ("192.0.2.7", ("192.0.2.7", 628)),  # qmail's form: an IP, port 628
        ("127.0.0.1:2628", ("127.0.0.1", 2628)),
        ("[::1]:2628", ("::1", 2628)),
        ("[::1]", ("::1", 628)),
        ("::1", ("::1", 628)),
        ("mx.example", None),  # qmail-qmqpc takes addresses, never names
        ("127.0.0.1:x", None),
        ("127.0.0.1:0", None),
        ("127.0.0.1:70000", None),
        ("[::1]x", None),
    ],
)
def test_parse_server(line: str, want: tuple[str, int] | None) -> None:
    assert parse_server(line, 628) == want


def test_qmqpservers_keeps_order_and_names_a_bad_line(tmp_path: Path) -> None:
    home = tmp_path
    (home / "control").mkdir()
    write_control(home, "qmqpservers", "# pool\n10.0.0.1\n\n10.0.0.2:2628\n")
    cfg = QmqpcConfig.load(Home(str(home)))
    assert cfg.servers == (("10.0.0.1", 628), ("10.0.0.2", 2628))
    write_control(home, "qmqpservers", "10.0.0.1\nqueue.example\n")
    with pytest.raises(ControlError) as err:
        QmqpcConfig.load(Home(str(home)))
    assert str(err.value).endswith("qmqpservers:2: 'queue.example' is not IP or IP:PORT")


def test_init_writes_listener_rules_and_check_validates_them(tmp_path: Path) -> None:
    """QMTP relays for loopback like SMTP; QMQP (no relay control) lets in loopback only."""
    home = tmp_path / "q"
    init_home(home)
    qmtp = parse_rules((home / "control" / "tcprules.qmtp").read_text())
    qmqp = parse_rules((home / "control" / "tcprules.qmqp").read_text())
    local = match(qmtp, "127.0.0.1")
    assert local is not None
    assert local.allow
    assert ("RELAYCLIENT", "") in local.env
    stranger = match(qmqp, "192.0.2.1")
    assert stranger is not None
    assert not stranger.allow
    loop = match(qmqp, "::1")
    assert loop is not None
    assert loop.allow
    assert pyqmail("check", "--home", str(home)).returncode == 0
    write_control(home, "tcprules.qmqp", "127.:allow\n10.:maybe\n")
    write_control(home, "qmqpservers", "nonsense\n")
    res = pyqmail("check", "--home", str(home))
    assert res.returncode == 1
    assert "tcprules.qmqp:2:" in res.stdout
    assert "qmqpservers:1:" in res.stdout
