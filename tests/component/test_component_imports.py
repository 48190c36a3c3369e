"""What each long-running component loads at start: the idle-memory budget (issue #11).

Every module named here costs each process that imports it resident memory
for as long as it runs (argparse ~1.4 MB, OpenSSL ~4.5 MB, dnspython ~7 MB);
these tests keep them out of the processes that have no use for them at idle.
"""

from __future__ import annotations

import smtplib
import subprocess
import sys
from pathlib import Path

import pytest

import pyqmail.start.logger
from pyqmail.unix import compargs
from tests.harness import init_home, running_mta

ALWAYS_OUT = ("argparse", "dns", "importlib.metadata", "email", "hashlib", "shutil", "pathlib")
NO_TLS = ("ssl", "_ssl", "_hashlib")

# (module the supervisor starts, started through pyqmail.unix.notls, also kept out)
COMPONENTS = [
    ("pyqmail.clean.__main__", False, ("asyncio", "concurrent.futures", "subprocess", "ssl")),
    ("pyqmail.lspawn.__main__", False, ("asyncio", "concurrent.futures", "ssl")),
    ("pyqmail.queue.__main__", True, NO_TLS),
    ("pyqmail.send.__main__", True, NO_TLS),
    ("pyqmail.lspawn.lookup", True, NO_TLS),
    ("pyqmail.rspawn.__main__", True, NO_TLS),  # until a remote offers STARTTLS
    ("pyqmail.smtpd.__main__", True, NO_TLS),  # until its first certificate
]


def loaded_after_import(module: str, notls: bool) -> set[str]:
    code = (
        "import sys\n"
        + ("sys.modules['ssl'] = None\n" if notls else "")
        + f"import {module}\n"
        + "print(' '.join(n for n, m in sys.modules.items() if m is not None))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return set(out.stdout.split())


def run_notls(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pyqmail.unix.notls", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(("module", "notls", "out"), COMPONENTS)
def test_a_component_starts_without_modules_it_does_not_need(
    module: str, notls: bool, out: tuple[str, ...]
) -> None:
    loaded = loaded_after_import(module, notls)
    assert module in loaded
    assert sorted(loaded & {*ALWAYS_OUT, *out}) == []


def test_notls_runs_the_module_with_its_arguments_and_refuses_ssl() -> None:
    # an unknown option reaches the component's own parser: exit 2, named
    r = run_notls("pyqmail.clean", "--bogus")
    assert r.returncode == 2
    assert "pyqmail-clean: error: unrecognized argument: --bogus" in r.stderr
    r = run_notls("json.tool", "--help")
    assert r.returncode == 0
    assert "json.tool" in r.stdout or "usage" in r.stdout
    # and OpenSSL stays out: importing it fails
    r = run_notls("ssl")
    assert r.returncode == 1
    assert "ImportError" in r.stderr
    assert "ssl" in r.stderr


def test_rspawn_loads_openssl_at_its_first_starttls_context() -> None:
    code = (
        "import sys\n"
        "sys.modules['ssl'] = None\n"
        "import asyncio\n"
        "from pyqmail.formats.tlspolicy import TlsLevel, TlsPolicy\n"
        "from pyqmail.remote.tls import TlsContexts\n"
        "assert sys.modules.get('ssl') is None\n"
        "ctx = TlsContexts().get(TlsPolicy(TlsLevel.MAY))\n"
        "print(type(ctx).__name__, sys.modules['ssl'] is not None)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.split() == ["SSLContext", "True"]


def test_notls_without_a_module_says_how_to_use_it() -> None:
    r = run_notls()
    assert r.returncode == 1
    assert "usage: python -m pyqmail.unix.notls [--uvloop] MODULE" in r.stderr


def test_the_logger_runs_without_site_and_copies_bytes_unchanged() -> None:
    data = bytes(range(256)) * 1000
    r = subprocess.run(
        [sys.executable, "-I", "-S", str(Path(pyqmail.start.logger.__file__))],
        input=data,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 0
    assert r.stdout == data


def test_component_arguments_in_both_spellings() -> None:
    a = compargs.parse(
        "p", compargs.VALUED + compargs.SWITCHES, ["--home", "/h", "--fd=3", "--fd", "4"]
    )
    assert (a.home, a.fd, a.submission_fd, a.rules, a.no_rcptcheck) == (
        "/h",
        [3, 4],
        [],
        None,
        False,
    )
    a = compargs.parse(
        "p",
        compargs.VALUED + compargs.SWITCHES,
        ["--submission-fd", "5", "--rules=/r", "--no-rcptcheck"],
    )
    assert (a.submission_fd, a.rules, a.no_rcptcheck) == ([5], "/r", True)


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["--fd", "3"], "unrecognized argument: --fd"),  # not allowed for this component
        (["--home"], "--home expects a value"),
        (["--home", "/h", "extra"], "unrecognized argument: extra"),
    ],
)
def test_bad_component_arguments_exit_2_naming_the_problem(
    argv: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        compargs.parse("pyqmail-x", ("--home",), argv)
    assert exc.value.code == 2
    assert f"pyqmail-x: error: {said}" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["--fd", "-1"], "--fd: not a file descriptor: '-1'"),
        (["--fd", "12345678901"], "--fd: not a file descriptor"),
        (["--submission-fd=x"], "--submission-fd: not a file descriptor: 'x'"),
        (["--no-rcptcheck=1"], "--no-rcptcheck takes no value"),
    ],
)
def test_bad_values_exit_2_naming_the_option(
    argv: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        compargs.parse("pyqmail-smtpd", compargs.VALUED + compargs.SWITCHES, argv)
    assert exc.value.code == 2
    assert said in capsys.readouterr().err


def _mapped(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def test_running_components_load_uvloop_where_chosen_and_no_openssl(tmp_path: Path) -> None:
    """At idle, with no certificate: no component has OpenSSL mapped; smtpd
    and the queue writer run on uvloop (if installed), the others on asyncio's
    loop (unix/notls.py weighs their memory against their CPU)."""
    try:
        import uvloop  # type: ignore[import-not-found,unused-ignore]  # noqa: F401

        have_uvloop = True
    except ImportError:
        have_uvloop = False
    home = tmp_path / "qmail"
    init_home(home)
    with running_mta(home) as mta:
        for name in ("smtpd", "queue", "send", "rspawn", "lookup"):
            maps = _mapped(mta.component_pid(name))
            assert "libssl" not in maps, name
            assert ("uvloop" in maps) == (have_uvloop and name in ("smtpd", "queue")), name
        # smtpd on uvloop still answers (and the writer still queues)
        with smtplib.SMTP("127.0.0.1", mta.smtp_port, timeout=30) as c:
            c.sendmail("a@example.org", ["postmaster@localhost"], b"Subject: x\r\n\r\nhi\r\n")
        mta.wait_for_maildir("postmaster")
