"""qmail-local: carry out one recipient's .qmail instructions.

Runs as: the recipient's uid (forked from lspawn, privileges already dropped).
Reads:   the queued message (fd), the user's home and .qmail files.
Writes:  the user's Maildirs and mboxes; runs the user's programs; forwards
         through the queue writer.
Trusts:  the .qmail files only as far as qmail does (see the safety checks).
Result:  (exit code, report) with qmail-local's codes: 0, 100, 111.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
import subprocess
import sysconfig
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from pyqmail.config import Home, read_control
from pyqmail.formats import dotqmail
from pyqmail.formats import envelope as env_fmt
from pyqmail.formats import mbox as mbox_fmt
from pyqmail.formats.assign import UserMatch
from pyqmail.formats.maildir import safe_host, unique_of
from pyqmail.ipc.queue_proto import submit_sync
from pyqmail.local import maildircommit, quota
from pyqmail.unix import durable
from pyqmail.unix.mboxlock import LockTimeout, lock_mbox

EXIT_OK, EXIT_PERM, EXIT_TEMP = 0, 100, 111
PERM_PROGRAM_CODES = {64, 65, 70, 76, 77, 78, 100, 112}
MAX_DOTQMAIL_BYTES = 1 << 20
HEADER_SCAN_BYTES = 1 << 20
MBOX_LOCK_WAIT_S = 30
READ_CHUNK = 1 << 20
# where the helper programs (forward, preline...) are installed; looked up at
# import, as root: sysconfig loads modules a mail user may not be able to read
SCRIPTS_DIR = sysconfig.get_path("scripts")


class Failure(Exception):
    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code
        self.text = text


def temp(text: str) -> Failure:
    return Failure(EXIT_TEMP, text)


def perm(text: str) -> Failure:
    return Failure(EXIT_PERM, text)


@dataclass(frozen=True, slots=True)
class LocalJob:
    message_path: str
    sender: bytes
    recipient: bytes
    key: str  # deterministic Maildir unique part, from send
    retry: bool  # an earlier attempt may have delivered already
    # opened by lspawn while still root: the recipient's uid may not read queue/
    message_fd: int | None = None

    def open_message(self) -> BinaryIO:
        if self.message_fd is None:
            return open(self.message_path, "rb")
        os.lseek(self.message_fd, 0, os.SEEK_SET)
        return os.fdopen(os.dup(self.message_fd), "rb")

    def read_message(self) -> bytes:
        if self.message_fd is None:
            with open(self.message_path, "rb") as fh:
                return fh.read()
        chunks = []
        offset = 0
        while chunk := os.pread(self.message_fd, READ_CHUNK, offset):
            chunks.append(chunk)
            offset += len(chunk)
        return b"".join(chunks)


@dataclass(frozen=True, slots=True)
class Plan:
    instructions: list[dotqmail.Instruction]
    default: str | None  # DEFAULT for programs, from a .qmail-...-default
    forward_only: bool

    @property
    def maildir_only(self) -> bool:
        """Nothing but Maildir lines: the deliveries a worker can commit as a group."""
        return not self.forward_only and all(
            isinstance(i, (dotqmail.Maildir, dotqmail.Comment)) for i in self.instructions
        )


@dataclass(slots=True)
class Outcome:
    files: int = 0
    forwards: int = 0
    programs: int = 0


def _quote_local(local: bytes) -> bytes:
    if not local or any(c in local for c in b' "\\()<>,;:@[]') or local.startswith(b"."):
        return b'"' + local.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return local


def rpline(sender: bytes) -> bytes:
    local, at, dom = sender.rpartition(b"@")
    if not at:
        return b"Return-Path: <" + sender + b">\n"
    return b"Return-Path: <" + _quote_local(local) + b"@" + dom + b">\n"


def dtline(recipient: bytes) -> bytes:
    return b"Delivered-To: " + recipient.replace(b"\n", b"_") + b"\n"


def ufline(sender: bytes, now: float) -> bytes:
    return mbox_fmt.from_line(sender, now)


def header_has_line(msg: bytes, line: bytes) -> bool:
    """Delivered-To loop check: exact, case-sensitive line match in the header.

    The header is the lines before the first empty line (qmail-files §5.8):
    a message that starts with an empty line has none, and only LF ends a
    line (bytes.splitlines would also split at a bare CR).
    """
    pos = 0
    while pos < min(len(msg), HEADER_SCAN_BYTES):
        end = msg.find(b"\n", pos)
        if end < 0 or end == pos:
            return False  # unterminated last line, or the empty line
        if msg[pos : end + 1] == line:
            return True
        pos = end + 1
    return False


class Delivery:
    def __init__(
        self, home: Home, job: LocalJob, user: UserMatch, aliasempty: str, host: str | None = None
    ) -> None:
        self.home = home
        self.job = job
        self.user = user
        self.aliasempty = aliasempty
        self.out = Outcome()
        self.host = socket.gethostname() if host is None else host
        local, _, domain = job.recipient.rpartition(b"@")
        self.local, self.domain = local, domain
        self.dt = dtline(job.recipient)
        self.rp = rpline(job.sender)
        self._msg: bytes | None = None
        self._newsender: bytes | None = None
        self._quotas: dict[str, int] | None = None
        self._quota_file: bool | None = None

    @property
    def message(self) -> bytes:
        if self._msg is None:
            self._msg = self.job.read_message()
        return self._msg

    # -- which .qmail -------------------------------------------------------
    def find_dotqmail(self) -> tuple[list[str], str | None, bool]:
        """(lines, DEFAULT value, forward_only) for this recipient."""
        u = self.user
        try:
            st = os.stat(u.home)
        except OSError as exc:
            raise temp(f"Unable to switch to {u.home}: {exc.strerror}. (#4.3.0)") from exc
        if st.st_mode & stat.S_IWOTH:
            raise temp("Uh-oh: home directory is writable. (#4.7.0)")
        if st.st_mode & stat.S_ISVTX:
            raise temp("Home directory is sticky: user is editing his .qmail file. (#4.2.1)")
        for name, default in dotqmail.candidate_files(u.dash, u.ext):
            path = os.path.join(u.home, name)
            try:
                # symlinks are followed, as qmail's open_read does; O_NONBLOCK
                # so a FIFO named .qmail-x cannot hang the delivery
                fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError as exc:
                if exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ENAMETOOLONG):
                    raise temp(f"Unable to open {name}: {exc.strerror}. (#4.2.1)") from exc
                continue
            try:
                fst = os.fstat(fd)
                if not stat.S_ISREG(fst.st_mode):
                    # qmail skips it as absent; a directory or FIFO where the
                    # user meant a .qmail is a mistake better kept than bounced
                    raise temp(f"Unable to read {name}: not a regular file. (#4.2.1)")
                if fst.st_mode & stat.S_IWOTH:
                    raise temp("Uh-oh: .qmail file is writable. (#4.7.0)")
                data = os.read(fd, MAX_DOTQMAIL_BYTES)
            finally:
                os.close(fd)
            text = data.decode("utf-8", "surrogateescape")
            if not text.strip():
                return [self.aliasempty], default, False
            lines = text.split("\n")
            if lines and lines[-1] == "":
                lines.pop()
            if not lines[0].strip(" \t"):
                raise temp("Uh-oh: first line of .qmail file is blank. (#4.2.1)")
            forward_only = bool(fst.st_mode & stat.S_IXUSR) or "+list" in lines
            return lines, default, forward_only
        if u.dash:
            raise perm("Sorry, no mailbox here by that name. (#5.1.1)")
        return [self.aliasempty], None, False

    def _is_file(self, name: str) -> bool:
        try:
            return stat.S_ISREG(os.stat(os.path.join(self.user.home, name)).st_mode)
        except OSError:
            return False

    def newsender(self) -> bytes:
        """The sender for forwards (qmail-files §5.7): the owner address if any."""
        if self._newsender is None:
            sender = self.job.sender
            owner = f".qmail{self.user.dash}{dotqmail.safe_ext(self.user.ext)}-owner"
            if sender and sender != b"#@[]" and self._is_file(owner):
                if self._is_file(owner + "-default"):
                    sender = self.local + b"-owner-@" + self.domain + b"-@[]"
                else:
                    sender = self.local + b"-owner@" + self.domain
            self._newsender = sender
        return self._newsender

    def check_quota(self, rel: str, used: int) -> None:
        """Soft limit: defer when the mailbox is already at or over the user's quota."""
        limit = self.quota_limit()
        if limit and used >= limit:
            raise temp(f"Sorry, {rel} is over its quota of {limit} bytes. (#4.2.2)")

    def quota_limit(self) -> int:
        """The user's limit from control/quotas; 0: none."""
        if self._quotas is None:
            path = self.home.control("quotas")
            try:
                self._quotas = quota.parse_quotas(read_control(self.home, "quotas"), path=path)
            except (OSError, ValueError) as exc:
                raise temp(f"Unable to read control/quotas: {exc}. (#4.3.0)") from exc
        return quota.limit_for(self._quotas, self.user.user)

    def _has_quota(self) -> bool:
        if self._quota_file is None:  # looked at once per delivery
            self._quota_file = os.path.exists(self.home.control("quotas"))
        return self._quota_file

    def groupable(self, plan: Plan) -> bool:
        """Maildir-only, and no quota to measure: the copies can wait for a group commit.

        A quota is measured before each delivery, so with one the deliveries
        go one at a time: of a group, all would be measured before any landed.
        """
        return plan.maildir_only and not (self._has_quota() and self.quota_limit())

    # -- the instructions ------------------------------------------------------
    def plan(self) -> Plan:
        """The loop check and the .qmail instructions, before anything is delivered."""
        if header_has_line(self.message, self.dt):
            raise perm("This message is looping: it already has my Delivered-To line. (#5.4.6)")
        lines, default, forward_only = self.find_dotqmail()
        return Plan([dotqmail.parse_line(raw) for raw in lines], default, forward_only)

    def run(self, plan: Plan | None = None) -> str:
        if plan is None:
            plan = self.plan()
        forwards: list[bytes] = []
        for ins in plan.instructions:
            if isinstance(ins, dotqmail.Comment):
                continue
            if isinstance(ins, dotqmail.Forward):
                forwards.append(ins.address.encode("utf-8", "surrogateescape"))
                continue
            if plan.forward_only:
                kind = "prog" if isinstance(ins, dotqmail.Program) else "file"
                raise temp(f"Uh-oh: .qmail has {kind} delivery but has x bit set. (#4.7.0)")
            if isinstance(ins, dotqmail.Maildir):
                self.maildir(ins.path)
            elif isinstance(ins, dotqmail.Mbox):
                self.mbox(ins.path)
            elif isinstance(ins, dotqmail.Program) and self.program(ins.command, plan.default):
                break  # exit 99: stop here, keep earlier forwards
        report = ""
        if forwards:
            report = self.forward(forwards)
        return self.report(report)

    def report(self, extra: str = "") -> str:
        return f"did {self.out.files}+{self.out.forwards}+{self.out.programs}\n{extra}"

    def stage(self, plan: Plan) -> list[maildircommit.Copy]:
        """A Maildir-only plan's copies, written but not yet durable (see maildircommit).

        The caller commits them, with other deliveries' copies, then calls
        finish(). A failure here has written nothing that could be mistaken
        for a delivery.
        """
        copies: list[maildircommit.Copy] = []
        try:
            for ins in plan.instructions:
                if isinstance(ins, dotqmail.Maildir):
                    copies.append(self._maildir_copy(ins.path))  # noqa: PERF401 (kept on error)
        except BaseException:
            for c in copies:
                maildircommit.discard(c)
            raise
        return copies

    def finish(self, copies: list[maildircommit.Copy]) -> str:
        """The report once the copies are committed; the first failed copy's error."""
        for c in copies:
            if c.error is not None:
                raise temp(c.error)
        self.out.files += len(copies)
        return self.report()

    def _path(self, rel: str) -> str:
        return os.path.join(self.user.home, rel)

    def maildir(self, rel: str) -> None:
        copy = self._maildir_copy(rel)
        maildircommit.commit([copy])
        if copy.error is not None:
            raise temp(copy.error)
        self.out.files += 1

    def _maildir_copy(self, rel: str) -> maildircommit.Copy:
        base = self._path(rel)
        name = f"{self.job.key}.{safe_host(self.host)}"
        if self.job.retry and self._already_in_maildir(base, name):
            # the earlier attempt may have died before syncing new/: the
            # commit syncs it again before this is reported
            return maildircommit.present(rel, base, name)
        self._make_subfolder(base)
        if self._has_quota():
            try:
                used = quota.maildir_bytes(base)
            except OSError as exc:
                raise temp(f"Unable to measure {rel}: {exc}. (#4.3.0)") from exc
            self.check_quota(rel, used)
        try:
            return maildircommit.write(rel, base, name, (self.rp, self.dt, self.message))
        except maildircommit.CopyError as exc:
            code = "4.2.1" if exc.what.startswith("open") else "4.3.0"
            raise temp(f"Unable to {exc.what} {rel}: {exc.strerror}. (#{code})") from exc

    @staticmethod
    def _make_subfolder(base: str) -> None:
        """A missing Maildir++ folder (``Maildir/.Name/``) is made, as IMAP servers do.

        Only under an existing Maildir, only a dot-name: any other missing
        Maildir stays a temporary failure, as in qmail.
        """
        folder = base.rstrip("/")
        parent, name = os.path.split(folder)
        if not name.startswith(".") or name in (".", "..") or os.path.isdir(folder + "/tmp"):
            return
        if not all(os.path.isdir(os.path.join(parent, s)) for s in ("tmp", "new", "cur")):
            return
        # each step tolerates an earlier, interrupted attempt (or the IMAP
        # server); tmp/ comes last: its presence means the folder is complete
        for d in (folder, os.path.join(folder, "cur"), os.path.join(folder, "new")):
            with contextlib.suppress(FileExistsError):
                os.mkdir(d, 0o700)
        with contextlib.suppress(FileExistsError):
            os.close(durable.create_exclusive(os.path.join(folder, "maildirfolder"), 0o600))
        with contextlib.suppress(FileExistsError):
            os.mkdir(os.path.join(folder, "tmp"), 0o700)
        durable.fsync_dir(folder)
        durable.fsync_dir(parent)

    @staticmethod
    def _already_in_maildir(base: str, name: str) -> bool:
        if os.path.exists(os.path.join(base, "new", name)):
            return True
        try:
            with os.scandir(os.path.join(base, "cur")) as it:
                return any(unique_of(e.name) == name for e in it)
        except OSError:
            return False

    def mbox(self, rel: str) -> None:
        path = self._path(rel)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise temp(f"Unable to open {rel}: {exc.strerror}. (#4.2.1)") from exc
        try:
            try:
                lock_mbox(fd, MBOX_LOCK_WAIT_S)
            except LockTimeout as exc:
                raise temp("File has been locked for 30 seconds straight. (#4.3.0)") from exc
            start = os.lseek(fd, 0, os.SEEK_END)
            if self._has_quota():
                self.check_quota(rel, start)
            head = ufline(self.job.sender, time.time()) + self.rp + self.dt
            try:
                durable.write_all(fd, mbox_fmt.entry(head, self.message))
                os.fsync(fd)
            except OSError as exc:
                os.ftruncate(fd, start)
                raise temp(f"Unable to write {rel}: {exc.strerror}. (#4.3.0)") from exc
        finally:
            os.close(fd)
        self.out.files += 1

    def program_env(self, default: str | None) -> dict[str, str]:
        def s(b: bytes) -> str:
            return b.decode("utf-8", "surrogateescape")

        u = self.user
        host = s(self.domain)
        parts = host.split(".")
        ext = u.ext
        ext_parts = ext.split("-")
        env = dict(os.environ)
        env.update(
            SENDER=s(self.job.sender),
            NEWSENDER=s(self.newsender()),
            RECIPIENT=s(self.job.recipient),
            USER=u.user,
            HOME=u.home,
            HOST=host,
            HOST2=".".join(parts[:-1]) or parts[0],
            HOST3=".".join(parts[:-2]) or parts[0],
            HOST4=".".join(parts[:-3]) or parts[0],
            LOCAL=s(self.local),
            EXT=ext,
            EXT2="-".join(ext_parts[1:]),
            EXT3="-".join(ext_parts[2:]),
            EXT4="-".join(ext_parts[3:]),
            DTLINE=s(self.dt),
            RPLINE=s(self.rp),
            UFLINE=s(ufline(self.job.sender, time.time())),
        )
        if default is not None:
            env["DEFAULT"] = default
        # the helper programs (forward, preline, condredirect...) find the
        # queue through QMAILHOME and are found on PATH, as in qmail's bin/
        env["QMAILHOME"] = self.home.root
        path = env.get("PATH", "/usr/local/bin:/usr/bin:/bin")
        if SCRIPTS_DIR not in path.split(":"):
            env["PATH"] = f"{path}:{SCRIPTS_DIR}"
        return env

    def program(self, command: str, default: str | None) -> bool:
        """Run ``sh -c``; True when it exits 99 (stop processing this .qmail)."""
        with self.job.open_message() as stdin:
            try:
                proc = subprocess.run(
                    ["/bin/sh", "-c", command],
                    stdin=stdin,
                    capture_output=True,
                    cwd=self.user.home,
                    env=self.program_env(default),
                    timeout=24 * 3600,
                    check=False,
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise temp(f"Unable to run program: {exc}. (#4.3.0)") from exc
        self.out.programs += 1
        output = (proc.stdout + proc.stderr).decode("utf-8", "replace")[:3000]
        code = proc.returncode
        if code in (0, 99):
            return code == 99
        if code in PERM_PROGRAM_CODES:
            raise perm(output or f"Program exited {code}. (#5.2.0)")
        raise temp(output or f"Program exited {code}. (#4.3.0)")

    def forward(self, addresses: list[bytes]) -> str:
        wire = env_fmt.format_wire(env_fmt.Envelope(self.newsender(), tuple(addresses)))
        res = submit_sync(self.home.writer_socket, b"local", self.dt + self.message, wire)
        if res.status == "D":
            raise perm(res.text)
        if res.status != "K":
            raise temp(res.text)
        self.out.forwards += len(addresses)
        return f"qp {res.msg_id}\n"


def _outcome(step: Callable[[], str]) -> tuple[int, str]:
    """(exit code, report) of a step, with qmail-local's exit codes."""
    try:
        report = step()
    except Failure as f:
        return f.code, f.text
    except OSError as exc:
        return EXIT_TEMP, _trouble(exc)
    return EXIT_OK, report


def _trouble(exc: OSError) -> str:
    return f"Local delivery trouble: {exc}. (#4.3.0)"


def deliver(
    home: Home, job: LocalJob, user: UserMatch, aliasempty: str, host: str | None = None
) -> tuple[int, str]:
    return _outcome(Delivery(home, job, user, aliasempty, host).run)


@dataclass(slots=True)
class Started:
    """A delivery whose .qmail has been read, and if it is Maildir-only, written.

    copies is None for any other delivery: complete() runs it whole. A
    Maildir-only delivery's copies wait for maildircommit.commit(), shared
    with the other deliveries of the batch, before complete() reports it.
    """

    delivery: Delivery
    plan: Plan
    copies: list[maildircommit.Copy] | None


def start(delivery: Delivery) -> Started | tuple[int, str]:
    """Begin a delivery; (exit code, report) when it already ended (a failure)."""
    try:
        plan = delivery.plan()
        copies = delivery.stage(plan) if delivery.groupable(plan) else None
    except Failure as f:
        return f.code, f.text
    except OSError as exc:
        return EXIT_TEMP, _trouble(exc)
    return Started(delivery, plan, copies)


def complete(started: Started) -> tuple[int, str]:
    """Run a delivery that was not staged, or report one whose copies are committed."""
    copies = started.copies
    if copies is None:
        return _outcome(lambda: started.delivery.run(started.plan))
    return _outcome(lambda: started.delivery.finish(copies))
