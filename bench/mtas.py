"""The two MTAs under test, each on a temporary directory and loopback ports.

pyqmail: ``pyqmail init`` + ``pyqmail start``; remote mail for example.net is
routed to the sink by control/smtproutes; local mail goes to postmaster's
Maildir. Postfix: a private instance (own config, queue and data
directories, ``postfix -c DIR start``) with Debian's defaults (fsync on)
except what a loopback benchmark needs: relayhost = the sink, a virtual(8)
Maildir for the local workload, no chroot, and the per-client connection
limit raised (as pyqmail's maxconnections/maxconnectionsperip) since every
benchmark client is 127.0.0.1. The fan-out message is injected
with each MTA's local submission program (Postfix's sendmail, pyqmail's
qmail-queue), as both smtpds stop at 1,000 recipients a transaction.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from procs import tree

BIN = Path(sys.executable).parent
POSTFIX = "/usr/sbin/postfix"
SENDMAIL = "/usr/sbin/sendmail"
REMOTE_DOMAIN = "example.net"
VMAIL_UID = 65534
IDLE_CLIENT_LIMIT = 1000  # per-client connection limits, raised alike in both


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for(pred: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(pred) and pred():
            return
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


def kill_leftovers(pids: list[int]) -> int:
    """SIGKILL any of these (our own) processes still alive; how many were."""
    alive = 0
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
            alive += 1
    return alive


class Mta:
    name = ""
    smtp_port = 0
    root_pid = 0

    def __init__(self, sink_port: int) -> None:
        self.sink_port = sink_port
        self.tmp = Path(tempfile.mkdtemp(prefix=f"bench-{self.name}-"))

    def local_rcpt(self) -> str:
        raise NotImplementedError

    def maildir(self) -> Path:
        raise NotImplementedError

    def inject(self, sender: str, rcpts: list[str], message: bytes) -> None:
        raise NotImplementedError

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def local_count(self) -> int:
        md = self.maildir()
        try:
            return len(os.listdir(md / "new")) + len(os.listdir(md / "cur"))
        except FileNotFoundError:
            return 0

    def local_ids(self) -> list[bytes]:
        out: list[bytes] = []
        md = self.maildir()
        for sub in ("new", "cur"):
            for name in os.listdir(md / sub):
                m = re.search(rb"\nX-Bench-Id: (\S+)", (md / sub / name).read_bytes())
                if m:
                    out.append(m.group(1))
        return out

    def clear_maildir(self) -> None:
        md = self.maildir()
        for sub in ("new", "cur"):
            with contextlib.suppress(FileNotFoundError):
                for name in os.listdir(md / sub):
                    os.unlink(md / sub / name)

    def cleanup(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def post_mortem(self, dest: Path) -> None:
        """Keep what tells why mail went missing: the MTA's log and queue, as they are."""
        shutil.rmtree(dest, ignore_errors=True)
        with contextlib.suppress(shutil.Error):  # sockets and FIFOs are not copied
            shutil.copytree(self.tmp, dest, symlinks=True, ignore_dangling_symlinks=True)
        print(f"kept {self.tmp} as {dest} for a post-mortem", file=sys.stderr)


class Pyqmail(Mta):
    name = "pyqmail"

    def __init__(self, sink_port: int) -> None:
        super().__init__(sink_port)
        self.home = self.tmp / "qmail"
        self.proc: subprocess.Popen[bytes] | None = None
        subprocess.run(
            [str(BIN / "pyqmail"), "init", "--home", str(self.home)],
            check=True,
            capture_output=True,
        )
        ctl = self.home / "control"
        (ctl / "resolvers").write_text("127.0.0.1:9\n")
        (ctl / "smtproutes").write_text(f"{REMOTE_DOMAIN}:127.0.0.1:{sink_port}\n")
        # every bench client is 127.0.0.1: (d) holds 500 connections from it
        (ctl / "maxconnections").write_text(f"{IDLE_CLIENT_LIMIT}\n")
        (ctl / "maxconnectionsperip").write_text(f"{IDLE_CLIENT_LIMIT}\n")

    def local_rcpt(self) -> str:
        return "postmaster@localhost"

    def maildir(self) -> Path:
        return self.home / "mailboxes" / "postmaster" / "Maildir"

    def start(self) -> None:
        log = self.tmp / "log"
        with open(log, "wb") as fh:
            self.proc = subprocess.Popen(
                # SMTP only, like the Postfix instance: the other listeners off
                [
                    *(str(BIN / "pyqmail"), "start", "--home", str(self.home)),
                    *("--smtp", "127.0.0.1:0", "--submission", "off"),
                    *("--qmtp", "off", "--qmqp", "off", "--pop3", "off"),
                ],
                stdout=fh,
                stderr=fh,
            )
        self.root_pid = self.proc.pid

        def ready() -> bool:
            text = log.read_text(errors="replace")
            m = re.search(r"smtp listening on 127\.0\.0\.1:(\d+)", text)
            if m and "smtpd ready" in text and "queue writer ready" in text:
                self.smtp_port = int(m.group(1))
                return True
            return False

        wait_for(ready, 30, "pyqmail to start")

    def inject(self, sender: str, rcpts: list[str], message: bytes) -> None:
        from pyqmail.formats import envelope as env_fmt

        wire = env_fmt.format_wire(
            env_fmt.Envelope(sender.encode(), tuple(r.encode() for r in rcpts))
        )
        env_file = self.tmp / "envelope"
        env_file.write_bytes(wire)
        with open(env_file, "rb") as envelope:
            subprocess.run(
                [str(BIN / "qmail-queue")],
                input=message,
                stdout=envelope,
                env={**os.environ, "QMAILHOME": str(self.home)},
                check=True,
            )

    def stop(self) -> None:
        if self.proc is None:
            return
        pids = tree(self.proc.pid)
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        time.sleep(0.2)
        if kill_leftovers(pids[1:]):
            print("warning: pyqmail left processes behind; killed them", file=sys.stderr)
        self.proc = None


class Postfix(Mta):
    name = "postfix"

    def __init__(self, sink_port: int) -> None:
        super().__init__(sink_port)
        self.etc = self.tmp / "etc"
        self.spool = self.tmp / "spool"
        self.data = self.tmp / "data"
        self.vmail = self.tmp / "vmail"
        for d in (self.etc, self.spool, self.data, self.vmail):
            d.mkdir()
        os.chmod(self.tmp, 0o755)
        shutil.chown(self.data, "postfix")
        os.chown(self.vmail, VMAIL_UID, VMAIL_UID)
        shutil.copy("/usr/share/postfix/master.cf.dist", self.etc / "master.cf")
        self.smtp_port = free_port()
        t = self.tmp
        main_cf = {
            "compatibility_level": "3.6",
            "queue_directory": f"{self.spool}",
            "data_directory": f"{self.data}",
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": "bench.invalid",
            "mydomain": "invalid",
            "mydestination": "",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "relayhost": f"[127.0.0.1]:{sink_port}",
            "smtp_host_lookup": "native",
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "virtual_mailbox_domains": "bench.local",
            "virtual_mailbox_base": f"{self.vmail}",
            "virtual_mailbox_maps": "inline:{ box@bench.local=box/ }",
            "virtual_uid_maps": f"static:{VMAIL_UID}",
            "virtual_gid_maps": f"static:{VMAIL_UID}",
            "maillog_file": f"{t}/maillog",
            "maillog_file_prefixes": f"{t}",
            # every bench client is 127.0.0.1: (d) holds 500 connections from it
            "smtpd_client_connection_count_limit": f"{IDLE_CLIENT_LIMIT}",
        }
        (self.etc / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in main_cf.items()))
        c = ["postconf", "-c", str(self.etc)]
        subprocess.run([*c, "-M#", "smtp/inet"], check=True)
        subprocess.run(
            [
                *c,
                "-Me",
                f"127.0.0.1:{self.smtp_port}/inet=127.0.0.1:{self.smtp_port} inet n - n - - smtpd",
            ],
            check=True,
        )
        subprocess.run(
            [*c, "-Me", "postlog/unix-dgram=postlog unix-dgram n - n - 1 postlogd"], check=True
        )
        subprocess.run([*c, "-F", "*/*/chroot = n"], check=True)

    def local_rcpt(self) -> str:
        return "box@bench.local"

    def maildir(self) -> Path:
        return self.vmail / "box"

    def _master_pid(self) -> int:
        try:
            return int((self.spool / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return 0

    def start(self) -> None:
        r = subprocess.run(
            [POSTFIX, "-c", str(self.etc), "start"], capture_output=True, text=True, check=False
        )
        if r.returncode:
            log = (self.tmp / "maillog").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"postfix start failed: {r.stderr}{log}")
        wait_for(lambda: self._master_pid() > 0, 20, "postfix master")
        self.root_pid = self._master_pid()

        def listening() -> bool:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.smtp_port)) == 0

        wait_for(listening, 20, "postfix smtpd port")

    def inject(self, sender: str, rcpts: list[str], message: bytes) -> None:
        subprocess.run(
            [SENDMAIL, "-C", str(self.etc), "-i", "-f", sender, *rcpts],
            input=message.replace(b"\r\n", b"\n"),
            check=True,
        )

    def stop(self) -> None:
        if not self.root_pid:
            return
        pids = tree(self.root_pid)
        subprocess.run([POSTFIX, "-c", str(self.etc), "stop"], capture_output=True, check=False)
        with contextlib.suppress(RuntimeError):
            wait_for(lambda: not any(Path(f"/proc/{p}").exists() for p in pids), 15, "postfix")
        if kill_leftovers(pids):
            print("warning: postfix left processes behind; killed them", file=sys.stderr)
        self.root_pid = 0


def postfix_usable() -> str | None:
    """Why Postfix cannot be run side by side, or None when it can."""
    if os.geteuid() != 0:
        return "not running as root"
    if not os.path.exists(POSTFIX):
        return f"{POSTFIX} not installed"
    try:
        import pwd

        pwd.getpwnam("postfix")
    except KeyError:
        return "no postfix user"
    if not os.path.exists("/usr/share/postfix/master.cf.dist"):
        return "no /usr/share/postfix/master.cf.dist"
    return None
