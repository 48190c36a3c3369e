"""qmail-send: preprocess new messages, schedule deliveries, retry, bounce.

Runs as: qmails (the invoking user in embedded mode).
Reads:   control/{me,locals,percenthack,virtualdomains,envnoathost,bouncefrom,
         bouncehost,doublebounceto,doublebouncehost,concurrencylocal,
         concurrencyremote,queuelifetime,remotebatch,retryunit,bounceformat};
         queue/todo, queue/mess.
Writes:  queue/info, queue/local, queue/remote, queue/bounce, queue/hold.
         Never todo/ or mess/: qmail-clean removes those. New messages
         (bounces) go through the queue writer like everyone else's.
Trusts:  the queue files (written by the queue writer and by itself); reports
         from lspawn/rspawn are parsed strictly and truncated; operator
         commands arrive on queue/lock/send.sock (send/control.py).

Theory of operation (qmail-files §6):
  todo/N -> info/S/N + local/S/N + remote/S/N (fsynced) -> clean removes
  todo/N: that removal is the commit point of preprocessing. A crash before
  it means the message is preprocessed again from scratch, with every local
  delivery flagged as "maybe done" so lspawn looks for its earlier copy.
  Each finished recipient has the first byte of its record flipped from T to
  D. When both channel files are gone the bounce (if any) is queued, clean
  removes mess/S/N and only then is info removed (qmail does it the other
  way round and leaves mess/S/N to a daily scan after an ill-timed crash).
  Operator holds are queue/hold/N; deletes drop the bounce first.

First attempt from todo/ (most mail is delivered at its first try, so
writing info/ and channel files, syncing them and asking clean to remove
todo/N is work thrown away a few milliseconds later):
  A new message with at most FAST_MAX_RCPTS recipients is delivered straight
  from todo/N, its recipients' state only in memory (Msg.fast). If every
  recipient succeeds, ONE clean request (``done/N``) removes todo/N, then
  mess/S/N. Otherwise, once every channel's first pass has reported, the
  message "spills": info/S/N, the channel files (D for recipients already
  done) and bounce/N (the permanent failures) are written exactly as
  preprocessing writes them, synced, and clean removes todo/N as for any
  new message; from there it is an ordinary queued message.
  Crashes: until clean removes todo/N, todo/N is the only record, and a
  restart preprocesses it again from scratch (any spill files are removed
  first). Remote recipients done in the lost attempt are then delivered
  again: the window qmail and the ordinary path have between a remote
  success and its D mark, stretched to the first attempt. Local delivery
  stays exactly once (DESIGN.md 1a) because a re-run attempt is always
  flagged "maybe done": every todo/N present when send starts is in
  Sender.inherited and gets the ordinary path with maybe_done set, whatever
  files it has; only mail that reached todo/ after this send listed it (so
  no earlier send can have seen it) is tried without that flag. A todo/N
  whose done/N clean could not carry out joins inherited too. The Maildir
  name of a local delivery contains birth, so birth must not move between
  attempts: it is mess/S/N's mtime (the writer's, never touched again), and
  info/S/N is given that mtime when written. Large messages (fan-out) take
  the ordinary path, so a crash never repeats thousands of remote deliveries.
  Operator commands see the message in msgs: hold and delete stop jobs not
  yet started; a held message spills once its running jobs report, a
  deleted one is removed with done/N; retry and release take effect when it
  spills. ``pyqmail queue list`` shows it from todo/N.

Large queues: memory holds one small record per message and channel (its
next pass time); a channel file is read when its pass starts and forgotten
when the pass ends, as qmail does, and the sender and birth are read from
info/ on the first pass. Each channel has its own time-ordered heap, and
passes are started only while that channel's ready list is short, so
100,000 due messages never make one loop turn long. Start-up reads only
directory listings and channel-file mtimes, a split directory per loop
turn, while new mail is already being preprocessed and delivered; todo/ is
listed again only once its backlog has been worked off.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import os
import signal
import time
import zlib
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from pyqmail.config import SPLIT, Home, SendConfig
from pyqmail.formats import envelope as env_fmt
from pyqmail.formats.address import domain_of, verp_sender
from pyqmail.formats.qsbmf import GIVE_UP, Failure, format_bounce_record, parse_bounce_file
from pyqmail.ipc.links import Link
from pyqmail.ipc.queue_proto import ENVELOPE_LIMIT, AsyncSubmission
from pyqmail.listing import hold_path
from pyqmail.send.bounce import build_bounce
from pyqmail.send.classify import classify, next_retry, strip_virtual
from pyqmail.unix import durable
from pyqmail.unix.logfmt import clean as logclean
from pyqmail.unix.logfmt import log
from pyqmail.unix.readall import read_all

TODO_RESCAN_S = 25 * 60
TODO_BATCH = 256  # messages preprocessed per loop turn (one fsync batch)
TODO_LIMIT = 2 * ENVELOPE_LIMIT  # beyond any todo/N the queue writer makes
FAST_MAX_RCPTS = 100  # larger messages are written out before their first attempt
FAST, SPILL = 1, 2  # stages of a first attempt from todo/ (Fast.stage)
STOP_GRACE_S = 3.0
REPORT_LIMIT = 10000
BOUNCE_RETRY_S = 60.0
INFO_RETRY_S = 300.0
LOAD_CHUNK = 500  # messages loaded per loop turn at start-up
READY_MIN = 64  # jobs kept ready per channel beyond its concurrency
CHANNELS = ("local", "remote")


# Unlinking waits for the journal while a commit runs, often longer than the
# rest of a delivery's bookkeeping: finished channel files are removed by one
# thread, in the order asked, while the loop goes on; one hand-over per loop
# turn, not per file (each costs futex wake-ups). Their records are all
# marked done already, so a restart that still finds one delivers nothing.
_UNLINKER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="unlink")


def _unlink_logged(paths: list[str]) -> None:
    for path in paths:
        try:
            durable.unlink_quiet(path)
        except OSError as exc:
            log(f"warning: unable to remove {path}: {exc}")


def unlink_later(paths: list[str]) -> Future[None]:
    return _UNLINKER.submit(_unlink_logged, paths)


@dataclass(slots=True)
class Rec:
    addr: bytes
    offset: int
    done: bool
    tried: bool = False


@dataclass(slots=True)
class Chan:
    kind: str
    next_time: float
    recs: list[Rec] | None = None  # only while a pass is running
    outstanding: int = 0
    pass_start: float = 0.0
    final: bool = False
    saved_time: float = 0.0  # the channel file's mtime as last written


@dataclass(slots=True)
class Fast:
    """A message in its first attempt from todo/N: no info or channel files yet."""

    birth_ns: int  # mess/S/N's mtime: info/S/N gets it if the message spills
    uid: int
    pid: int
    stage: int = FAST  # SPILL: written out, waiting for the sync and clean's todo/N
    failures: list[bytes] = field(default_factory=list)  # bounce records, kept until a spill


@dataclass(slots=True)
class Msg:
    msg_id: int
    chans: list[Chan]  # a list, not a dict: a third of the size, kept for every message
    maybe_done: bool
    birth: float = 0.0
    sender: bytes | None = None  # None until info/S/N has been read
    held: bool = False
    deleted: bool = False
    finishing: bool = False
    fast: Fast | None = None  # set only during a first attempt from todo/

    def chan(self, kind: str) -> Chan | None:
        for c in self.chans:
            if c.kind == kind:
                return c
        return None


@dataclass(slots=True)
class Job:
    job_id: bytes
    msg: Msg
    chan: Chan
    recs: list[Rec]
    sender: bytes
    dnums: list[int] = field(default_factory=list)


class Sender:
    def __init__(self, home: Home, cfg: SendConfig) -> None:
        self.home = home
        self.cfg = cfg
        self.msgs: dict[int, Msg] = {}
        self.heaps: dict[str, list[tuple[float, int]]] = {c: [] for c in CHANNELS}
        self.ready: dict[str, deque[Job]] = {c: deque() for c in CHANNELS}
        self.inflight: dict[str, dict[bytes, Job]] = {c: {} for c in CHANNELS}
        self.awaiting_clean: dict[bytes, Msg | None] = {}
        self.clean_backlog: list[bytes] = []
        self.preprocessing: set[int] = set()
        self.removing: set[int] = set()  # foop/N asked, info/S/N not yet unlinked
        self.todo_backlog: deque[int] = deque()
        self.todo_known: set[int] = set()
        # todo/N that an earlier send may have started delivering (see the
        # module docstring): never a first attempt from todo/, always maybe done
        self.inherited: set[int] = set()
        self.spills: list[Msg] = []  # written out, not yet synced
        self.spill_fds: list[int] = []
        self.spill_dirs: set[str] = set()
        self.dnum = 0
        self.job_seq = 0
        self.wake = asyncio.Event()
        self.scan_todo = True
        self.stopping = False
        self.links = {
            "local": Link(
                "lspawn",
                home.socket("lspawn"),
                self._on_reply_local,
                self._on_lost_local,
                self.kick,
            ),
            "remote": Link(
                "rspawn",
                home.socket("rspawn"),
                self._on_reply_remote,
                self._on_lost_remote,
                self.kick,
            ),
        }
        self.clean = Link(
            "clean", home.socket("clean"), self._on_clean, self._on_clean_lost, self._on_clean_up
        )
        self._trigger_fd = -1
        self.dirty: set[str] = set()  # channel files with marks not yet fsynced
        self.unlinks: list[str] = []  # finished channel files, for unlink_later
        self.tasks: set[asyncio.Task[None]] = set()

    # -- helpers ------------------------------------------------------------
    def kick(self) -> None:
        self.wake.set()

    @property
    def unit(self) -> float:
        return self.cfg.retryunit_ms / 1000.0

    def concurrency(self, kind: str) -> int:
        return self.cfg.concurrencylocal if kind == "local" else self.cfg.concurrencyremote

    def chan_path(self, msg: Msg, kind: str) -> str:
        return self.home.split_path(kind, msg.msg_id)

    def status(self) -> None:
        log(
            f"status: local {len(self.inflight['local'])}/{self.cfg.concurrencylocal} "
            f"remote {len(self.inflight['remote'])}/{self.cfg.concurrencyremote}"
        )

    def schedule(self, msg: Msg, chan: Chan, when: float) -> None:
        chan.next_time = when
        heapq.heappush(self.heaps[chan.kind], (when, msg.msg_id))

    def _load_info(self, msg: Msg) -> bool:
        """Read sender and birth (info's mtime) the first time they are needed."""
        if msg.sender is not None:
            return True
        info_path = self.home.split_path("info", msg.msg_id)
        try:
            st = os.stat(info_path)
            with open(info_path, "rb") as fh:
                info = env_fmt.parse_todo(fh.read(1 << 16))
        except (OSError, env_fmt.EnvelopeError) as exc:
            log(f"warning: unable to read {info_path}: {exc}")
            return False
        msg.birth, msg.sender = st.st_mtime, info.sender
        return True

    # -- start-up ---------------------------------------------------------------
    async def load(self) -> None:
        """Rebuild in-memory state from info/, the channel files and hold/.

        LOAD_CHUNK messages per loop turn; only mtimes are read, so deliveries
        of new mail start before a large queue is fully loaded.
        """
        todo = {n for n in os.listdir(self.home.q("todo")) if n.isdigit()}
        held: set[int] = set()
        with contextlib.suppress(FileNotFoundError):  # a home older than hold/
            held = {int(n) for n in os.listdir(self.home.q("hold")) if n.isdigit()}
        count = 0
        for sub in map(str, range(SPLIT)):
            # new mail (already in msgs or being preprocessed) is left out now,
            # at listing time: by its chunk's turn it may have come and gone
            names = [
                n
                for n in os.listdir(self.home.q("info", sub))
                if n.isdigit()
                and n not in todo
                and int(n) not in self.msgs
                and int(n) not in self.preprocessing
                and int(n) not in self.removing
            ]
            present = {kind: set(os.listdir(self.home.q(kind, sub))) for kind in CHANNELS}
            for i in range(0, len(names), LOAD_CHUNK):
                count += self._load_names(sub, names[i : i + LOAD_CHUNK], present, held)
                self.kick()
                await asyncio.sleep(0)  # new mail is preprocessed and delivered meanwhile
        log(f"status: loaded {count} queued message(s)")

    def _load_names(
        self,
        sub: str,
        names: list[str],
        present: dict[str, set[str]],
        held: set[int],
    ) -> int:
        count = 0
        for name in names:
            msg_id = int(name)
            msg = Msg(msg_id, [], maybe_done=True, held=msg_id in held)
            for kind in CHANNELS:
                if name not in present[kind]:
                    continue
                try:
                    mtime = os.stat(self.home.q(kind, sub, name)).st_mtime
                except FileNotFoundError:
                    continue
                chan = Chan(kind, mtime, saved_time=mtime)
                msg.chans.append(chan)
                if not msg.held:
                    self.schedule(msg, chan, mtime)
            self.msgs[msg_id] = msg
            count += 1
            if not msg.chans:
                self._finish(msg)
        return count

    # -- preprocessing ----------------------------------------------------------
    def _refill_todo(self) -> None:
        """List todo/ again, but only when the last listing has been worked off:
        a trigger per new message must not cost a scan of a huge backlog."""
        if self.todo_backlog:
            return
        self.scan_todo = False
        try:
            names = os.listdir(self.home.q("todo"))
        except OSError as exc:
            log(f"alert: cannot read todo: {exc}")
            return
        fresh = sorted(
            int(n)
            for n in names
            if n.isdigit()
            and int(n) not in self.msgs
            and int(n) not in self.preprocessing
            and int(n) not in self.todo_known
            and int(n) not in self.removing  # finished from todo/: clean is removing it
        )
        self.todo_backlog.extend(fresh)
        self.todo_known.update(fresh)

    async def preprocess_todo(self) -> None:
        batch: list[Msg] = []
        dirs: set[str] = set()
        fds: list[int] = []
        count = 0
        now = time.time()
        try:
            while self.todo_backlog and count < TODO_BATCH:
                msg_id = self.todo_backlog.popleft()
                self.todo_known.discard(msg_id)
                if msg_id in self.preprocessing or msg_id in self.msgs:
                    continue
                count += 1
                # in preprocessing until clean's reply puts it in msgs, so the
                # loader never mistakes its fresh info/ for an old message
                self.preprocessing.add(msg_id)
                msg = None
                try:
                    msg = self._preprocess_one(msg_id, dirs, fds)
                finally:
                    if msg is None or msg.fast is not None:
                        self.preprocessing.discard(msg_id)
                if msg is None:
                    continue
                if msg.fast is not None:
                    self.msgs[msg_id] = msg  # first attempt straight from todo/N
                    for chan in msg.chans:
                        self.schedule(msg, chan, now)
                else:
                    batch.append(msg)
            if not batch:
                return
            # info and channel files and their directories, in one round,
            # before clean may remove todo/N (the commit point of preprocessing)
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, durable.fsync_fds_and_dirs, fds, dirs)
        finally:
            for fd in fds:
                os.close(fd)
        for msg in batch:
            self._clean_request(b"todo/%d" % msg.msg_id, msg)

    def _preprocess_one(self, msg_id: int, dirs: set[str], fds: list[int]) -> Msg | None:
        todo_path = self.home.q("todo", str(msg_id))
        try:
            # os.open, not open(): a buffered file costs three more syscalls
            fd = os.open(todo_path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                todo = env_fmt.parse_todo(read_all(fd, TODO_LIMIT))
            finally:
                os.close(fd)
        except FileNotFoundError:
            return None
        except (OSError, env_fmt.EnvelopeError) as exc:
            log(f"warning: trouble with todo/{msg_id}: {exc}")
            return None
        inherited = msg_id in self.inherited
        self.inherited.discard(msg_id)
        try:
            st = os.stat(self.home.split_path("mess", msg_id))
        except OSError as exc:
            if isinstance(exc, FileNotFoundError) and inherited:
                # clean removes todo/N before mess/S/N, but a crash may keep
                # only the second removal: every delivery was done
                log(f"info: todo/{msg_id} has no mess: finishing its removal")
                self.removing.add(msg_id)
                self._clean_request(b"done/%d" % msg_id, None)
            else:
                log(f"warning: trouble with todo/{msg_id}: {exc}")
            return None
        log(f"new msg {msg_id}")
        sender = logclean(todo.sender.decode("utf-8", "replace"))
        log(f"info msg {msg_id}: bytes {st.st_size} from <{sender}> qp {todo.pid} uid {todo.uid}")
        lists: dict[str, list[bytes]] = {c: [] for c in CHANNELS}
        for rcpt in todo.recipients:
            kind, addr = classify(rcpt, self.cfg)
            lists[kind].append(addr)
        # birth is mess/S/N's mtime, which no crash or retry changes: it is
        # part of every local delivery's Maildir name, so a redelivery after a
        # crash finds the earlier copy (info/S/N is given the same mtime)
        now = time.time()
        if not inherited and len(todo.recipients) <= FAST_MAX_RCPTS:
            fast = Fast(st.st_mtime_ns, todo.uid, todo.pid)
            msg = Msg(msg_id, [], False, st.st_mtime, todo.sender, fast=fast)
            for kind in CHANNELS:
                if lists[kind]:
                    recs = [Rec(a, 0, False) for a in lists[kind]]
                    msg.chans.append(Chan(kind, now, recs))
            return msg
        if inherited:
            self._drop_leftovers(msg_id)
        msg = Msg(msg_id, [], inherited, st.st_mtime, todo.sender)
        msg.held = inherited and os.path.exists(hold_path(self.home, msg_id))
        info = env_fmt.QueuedEnvelope(todo.uid, todo.pid, todo.sender, ())
        try:
            self._write_info(msg, st.st_mtime_ns, env_fmt.format_todo(info), fds, dirs)
        except FileExistsError:
            # not expected for mail that came after start-up; be safe anyway
            self._drop_leftovers(msg_id)
            msg.maybe_done = True
            self._write_info(msg, st.st_mtime_ns, env_fmt.format_todo(info), fds, dirs)
        for kind in CHANNELS:
            if not lists[kind]:
                continue
            data = b"".join(b"T" + a + b"\0" for a in lists[kind])
            self._write_new(self.chan_path(msg, kind), data, fds, dirs)
            offsets = env_fmt.channel_offsets(data)
            recs = [Rec(a, o, False) for a, o in zip(lists[kind], offsets, strict=True)]
            msg.chans.append(Chan(kind, now, recs, saved_time=now))
        return msg

    def _drop_leftovers(self, msg_id: int) -> None:
        """Files of an earlier, uncommitted preprocessing or spill of todo/N."""
        for kind in ("info", *CHANNELS):
            durable.unlink_quiet(self.home.split_path(kind, msg_id))
        durable.unlink_quiet(self.home.q("bounce", str(msg_id)))

    @staticmethod
    def _write_new(path: str, data: bytes, fds: list[int], dirs: set[str]) -> None:
        fds.append(durable.create_exclusive(path))
        durable.write_all(fds[-1], data)
        dirs.add(os.path.dirname(path))

    def _write_info(
        self, msg: Msg, birth_ns: int, data: bytes, fds: list[int], dirs: set[str]
    ) -> None:
        self._write_new(self.home.split_path("info", msg.msg_id), data, fds, dirs)
        os.utime(fds[-1], ns=(birth_ns, birth_ns))

    # -- first attempts from todo/ ------------------------------------------------
    @staticmethod
    def _fast_idle(msg: Msg) -> bool:
        """Every channel's first pass has ended (or will not start: held, deleted)."""
        stopped = msg.held or msg.deleted
        return all(c.outstanding == 0 and (c.pass_start or stopped) for c in msg.chans)

    def _settle(self, msg: Msg) -> None:
        """The first attempt is over: finish the message, or spill it to disk."""
        fast = msg.fast
        assert fast is not None
        assert fast.stage == FAST
        msg.chans = [c for c in msg.chans if not all(r.done for r in c.recs or ())]
        if not msg.chans and not fast.failures:
            msg.finishing = True
            self._remove(msg)
            return
        fast.stage = SPILL
        fds: list[int] = []
        try:
            info = env_fmt.QueuedEnvelope(fast.uid, fast.pid, msg.sender or b"", ())
            try:
                self._write_info(
                    msg, fast.birth_ns, env_fmt.format_todo(info), fds, self.spill_dirs
                )
            except FileExistsError:  # not expected: nothing but us writes it
                self._drop_leftovers(msg.msg_id)
                self._write_info(
                    msg, fast.birth_ns, env_fmt.format_todo(info), fds, self.spill_dirs
                )
            for chan in msg.chans:
                recs = chan.recs or []
                data = b"".join((b"D" if r.done else b"T") + r.addr + b"\0" for r in recs)
                self._write_new(self.chan_path(msg, chan.kind), data, fds, self.spill_dirs)
                chan.recs = None  # read again at its next pass, as for any queued message
            if fast.failures:
                path = self.home.q("bounce", str(msg.msg_id))
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
                fds.append(fd)
                durable.write_all(fd, b"".join(fast.failures))
                self.spill_dirs.add(os.path.dirname(path))
        except OSError as exc:
            for fd in fds:
                os.close(fd)
            self._spill_failed(msg, exc)
            return
        self.spill_fds.extend(fds)
        self.spills.append(msg)
        self.kick()

    def _spill_failed(self, msg: Msg, exc: OSError) -> None:
        # todo/N stays: its next preprocessing (at the next todo/ scan or
        # start-up) delivers again, local deliveries as maybe done
        log(f"alert: unable to write out msg {msg.msg_id}: {exc}; will try it again later")
        self.msgs.pop(msg.msg_id, None)
        self.inherited.add(msg.msg_id)

    async def commit_spills(self) -> None:
        """One sync for every spill written since the last, then clean's todo/N."""
        spills, self.spills = self.spills, []
        fds, self.spill_fds = self.spill_fds, []
        dirs, self.spill_dirs = self.spill_dirs, set()
        try:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, durable.fsync_fds_and_dirs, fds, dirs)
        except OSError as exc:
            for msg in spills:
                self._spill_failed(msg, exc)
            return
        finally:
            for fd in fds:
                os.close(fd)
        for msg in spills:
            self._clean_request(b"todo/%d" % msg.msg_id, msg)

    def _spilled(self, msg: Msg, ok: bool) -> None:
        """clean's answer to a spill's todo/N: the message is an ordinary one now."""
        if not ok:
            self._spill_failed(msg, OSError("qmail-clean could not remove todo"))
            return
        msg.fast = None
        if msg.deleted:
            self._delete_if_idle(msg)
            return
        if not msg.chans:
            self._finish(msg)
            return
        if not msg.held:
            for chan in msg.chans:
                self.schedule(msg, chan, chan.next_time)
        self.kick()

    # -- clean ---------------------------------------------------------------------
    def _clean_request(self, cmd: bytes, msg: Msg | None) -> None:
        self.awaiting_clean[cmd] = msg
        if not self.clean.send(cmd):
            self.clean_backlog.append(cmd)

    def _on_clean_up(self) -> None:
        backlog, self.clean_backlog = self.clean_backlog, []
        for cmd in backlog:
            if not self.clean.send(cmd):
                self.clean_backlog.append(cmd)

    def _on_clean_lost(self, lost: list[bytes]) -> None:
        self.clean_backlog.extend(lost)

    def _on_clean(self, fields: list[bytes]) -> None:
        cmd = fields[0]
        result = fields[1] if len(fields) > 1 else b"x"
        msg = self.awaiting_clean.pop(cmd, None)
        if result != b"+":
            log(f"warning: qmail-clean unable to clean up {cmd.decode(errors='replace')}")
        if cmd.startswith(b"foop/") and msg is not None:
            self.removing.discard(msg.msg_id)
            if result == b"+":
                durable.unlink_quiet(self.home.split_path("info", msg.msg_id))
            return  # else info/ stays, and the next start-up finishes it again
        if cmd.startswith(b"done/"):
            msg_id = int(cmd[5:])
            self.removing.discard(msg_id)
            if result != b"+":
                # todo/N may still be there: found again, it is delivered as
                # maybe done, so no local copy is made twice
                self.inherited.add(msg_id)
            return
        if cmd.startswith(b"todo/") and msg is not None and msg.fast is not None:
            self._spilled(msg, result == b"+")
            return
        if cmd.startswith(b"todo/") and msg is not None:
            self.preprocessing.discard(msg.msg_id)
            if result != b"+":
                return  # todo/N stays; it will be preprocessed again
            self.msgs[msg.msg_id] = msg
            if not msg.chans:
                self._finish(msg)
            for chan in msg.chans:
                if not msg.held:
                    self.schedule(msg, chan, time.time())
            self.kick()

    # -- passes and jobs -----------------------------------------------------------
    def start_due(self) -> float | None:
        """Start every due pass a channel has room for; seconds until the next one."""
        now = time.time()
        delay: float | None = None
        for kind in CHANNELS:
            heap, ready = self.heaps[kind], self.ready[kind]
            room = READY_MIN + self.concurrency(kind)
            while heap and len(ready) < room:
                when, msg_id = heap[0]
                if when > now:
                    wait = when - now
                    delay = wait if delay is None else min(delay, wait)
                    break
                heapq.heappop(heap)
                msg = self.msgs.get(msg_id)
                chan = msg.chan(kind) if msg else None
                if msg is None or chan is None or chan.outstanding or chan.next_time != when:
                    continue  # a stale entry: rescheduled, finished or running
                if msg.held or msg.deleted or (msg.fast is not None and msg.fast.stage == SPILL):
                    continue
                self._start_pass(msg, chan, now)
        return delay

    def _read_recs(self, msg: Msg, chan: Chan) -> list[Rec] | None:
        path = self.chan_path(msg, chan.kind)
        try:
            with open(path, "rb") as fh:
                data = fh.read()
            records = env_fmt.parse_channel(data)
        except FileNotFoundError:
            return []
        except (OSError, env_fmt.EnvelopeError) as exc:
            log(f"warning: unable to read {path}: {exc}")
            return None
        offsets = env_fmt.channel_offsets(data)
        return [
            Rec(addr, off, done, tried=True)
            for (done, addr), off in zip(records, offsets, strict=True)
        ]

    def _start_pass(self, msg: Msg, chan: Chan, now: float) -> None:
        recs = chan.recs if chan.recs is not None else self._read_recs(msg, chan)
        if recs is None or not self._load_info(msg):
            self.schedule(msg, chan, now + INFO_RETRY_S)
            return
        assert msg.sender is not None
        chan.recs = recs
        chan.pass_start = now
        chan.final = now > msg.birth + self.cfg.queuelifetime
        todo = [r for r in recs if not r.done]
        jobs: list[Job] = []
        if chan.kind == "local":
            jobs = [Job(b"", msg, chan, [r], verp_sender(msg.sender, r.addr)) for r in todo]
        else:
            groups: dict[tuple[str, bytes], list[Rec]] = {}
            for r in todo:
                snd = verp_sender(msg.sender, r.addr)
                groups.setdefault((domain_of(r.addr), snd), []).append(r)
            size = self.cfg.remote_batch
            for (_dom, snd), grp in groups.items():
                jobs.extend(
                    Job(b"", msg, chan, grp[i : i + size], snd) for i in range(0, len(grp), size)
                )
        chan.outstanding = len(jobs)
        self.ready[chan.kind].extend(jobs)
        if not jobs:
            self._pass_done(msg, chan)

    def dispatch(self) -> None:
        if self.stopping:
            return
        for kind in CHANNELS:
            link = self.links[kind]
            ready, inflight = self.ready[kind], self.inflight[kind]
            started = False
            while ready and link.up and len(inflight) < self.concurrency(kind):
                job = ready.popleft()
                if job.msg.held or job.msg.deleted:
                    self._drop_job(job)
                    continue
                self.job_seq += 1
                job.job_id = b"%d" % self.job_seq
                job.dnums = []
                messpath = b"%d/%d" % (job.msg.msg_id % SPLIT, job.msg.msg_id)
                for r in job.recs:
                    self.dnum += 1
                    job.dnums.append(self.dnum)
                    log(
                        f"starting delivery {self.dnum}: msg {job.msg.msg_id} to {kind} "
                        f"{logclean(r.addr.decode('utf-8', 'replace'))}"
                    )
                if kind == "local":
                    r = job.recs[0]
                    key = b"%d.Q%dR%08x" % (int(job.msg.birth), job.msg.msg_id, zlib.crc32(r.addr))
                    retry = b"1" if (job.msg.maybe_done or r.tried) else b"0"
                    fields = [job.job_id, messpath, job.sender, r.addr, key, retry]
                else:
                    fields = [job.job_id, messpath, job.sender, *[r.addr for r in job.recs]]
                for r in job.recs:
                    r.tried = True
                link.send(*fields)
                inflight[job.job_id] = job
                started = True
            if started:
                self.status()

    def _drop_job(self, job: Job) -> None:
        """A ready job of a held or deleted message: the pass ends without it."""
        job.chan.outstanding -= 1
        if job.chan.outstanding == 0:
            self._pass_done(job.msg, job.chan)

    def _on_reply_local(self, fields: list[bytes]) -> None:
        self._on_reply("local", fields)

    def _on_reply_remote(self, fields: list[bytes]) -> None:
        self._on_reply("remote", fields)

    def _on_lost_local(self, lost: list[bytes]) -> None:
        self._on_lost("local", lost)

    def _on_lost_remote(self, lost: list[bytes]) -> None:
        self._on_lost("remote", lost)

    def _on_lost(self, kind: str, lost: list[bytes]) -> None:
        # the spawner died: these attempts never reported; run them again now
        # (local ones are flagged tried, so lspawn will look for an earlier copy)
        for job_id in lost:
            job = self.inflight[kind].pop(job_id, None)
            if job is not None:
                self.ready[kind].appendleft(job)
        self.kick()

    def _on_reply(self, kind: str, fields: list[bytes]) -> None:
        job = self.inflight[kind].pop(fields[0], None)
        if job is None:
            return
        results = fields[1:]
        marks: list[int] = []
        for i, rec in enumerate(job.recs):
            res = results[i] if i < len(results) else b"Zreport mangled, will defer"
            if self._record(job, rec, job.dnums[i], res[:1], res[1:REPORT_LIMIT]):
                marks.append(rec.offset)
        if marks and job.msg.fast is None:
            self._mark(self.chan_path(job.msg, job.chan.kind), marks)
        job.chan.outstanding -= 1
        if job.chan.outstanding == 0:
            self._pass_done(job.msg, job.chan)
        self.status()
        self.kick()

    def _record(self, job: Job, rec: Rec, dnum: int, status: bytes, text: bytes) -> bool:
        """Log one result; True when the recipient is done (to be marked D)."""
        msg, chan = job.msg, job.chan
        if status == b"Z" and chan.final:
            status = b"D"
            text = text.rstrip(b"\n") + b"\n" + GIVE_UP + b"\n"
        shown = logclean(text.decode("utf-8", "replace"))
        if status == b"K":
            log(f"delivery {dnum}: success: {shown}")
        elif status == b"D":
            log(f"delivery {dnum}: failure: {shown}")
            record = format_bounce_record(Failure(strip_virtual(rec.addr, self.cfg), text))
            if msg.fast is not None:
                msg.fast.failures.append(record)  # written out by the spill
            else:
                with open(self.home.q("bounce", str(msg.msg_id)), "ab") as fh:
                    fh.write(record)
        else:
            if status != b"Z":
                log(f"delivery {dnum}: report mangled, will defer")
            else:
                log(f"delivery {dnum}: deferral: {shown}")
            return False
        rec.done = True
        return True

    def _mark(self, path: str, offsets: list[int]) -> None:
        """Flip the records of one job's finished recipients to D: one open."""
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                for offset in offsets:
                    os.pwrite(fd, b"D", offset)
            finally:
                os.close(fd)
            self.dirty.add(path)
        except OSError as exc:
            log(f"warning: trouble marking {path}: {exc}; will be delivered twice!")

    async def sync_marks(self) -> None:
        """Sync every channel file marked since the last call: one round per
        loop turn, off the loop (replies keep coming in meanwhile)."""
        dirty, self.dirty = self.dirty, set()
        fds: list[int] = []
        try:
            for path in dirty:
                try:
                    fds.append(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
                except FileNotFoundError:
                    continue  # finished and unlinked: nothing left to redo
            if fds:
                loop = asyncio.get_running_loop()
                await loop.run_in_executor(None, durable.fsync_fds_and_dirs, fds, ())
        except OSError as exc:
            log(f"warning: unable to sync delivery marks: {exc}")
        finally:
            for fd in fds:
                os.close(fd)

    def _pass_done(self, msg: Msg, chan: Chan) -> None:
        if msg.fast is not None:
            # recs are kept for the spill; next_time is its retry if it spills
            chan.next_time = next_retry(msg.birth, chan.pass_start, chan.kind, self.unit)
            if msg.deleted:
                self._delete_if_idle(msg)
            elif not msg.finishing and self._fast_idle(msg):
                self._settle(msg)
            return
        recs, chan.recs = chan.recs, None
        if msg.deleted:
            self._delete_if_idle(msg)
            return
        if recs is not None and all(r.done for r in recs):
            path = self.chan_path(msg, chan.kind)
            self.dirty.discard(path)
            self.unlinks.append(path)
            msg.chans.remove(chan)
            if not msg.chans:
                self._finish(msg)
            return
        when = next_retry(msg.birth, chan.pass_start, chan.kind, self.unit)
        if msg.held:
            chan.next_time = when  # kept for the record; release schedules it now
        else:
            self.schedule(msg, chan, when)

    # -- operator commands (through send/control.py) ------------------------------------
    def find(self, msg_id: int) -> Msg | None:
        msg = self.msgs.get(msg_id)
        return None if msg is None or msg.deleted else msg

    def hold(self, msg: Msg) -> None:
        if msg.held:
            return
        # its existence is the record: made durable, so a hold survives a crash
        with contextlib.suppress(FileExistsError):
            os.close(durable.create_exclusive(hold_path(self.home, msg.msg_id)))
        durable.fsync_dir(self.home.q("hold"))
        msg.held = True
        self._purge_ready(msg)
        fast = msg.fast
        if fast and fast.stage == FAST and not msg.finishing and self._fast_idle(msg):
            self._settle(msg)  # its first pass had not started: written out, held
        log(f"status: msg {msg.msg_id} held by the operator")

    def release(self, msg: Msg) -> None:
        if not msg.held:
            return
        durable.unlink_quiet(hold_path(self.home, msg.msg_id))
        msg.held = False
        now = time.time()
        for chan in msg.chans:
            if msg.fast is not None:
                chan.next_time = now  # scheduled once it is written out
            elif not chan.outstanding:
                self.schedule(msg, chan, now)
        log(f"status: msg {msg.msg_id} released by the operator")
        self.kick()

    def retry(self, msg: Msg | None) -> None:
        """Make one message (None: every message, like SIGALRM) due now."""
        now = time.time()
        if msg is not None:
            for chan in msg.chans:
                if chan.outstanding or msg.held:
                    continue
                if msg.fast is not None:
                    chan.next_time = now  # scheduled once it is written out
                else:
                    self.schedule(msg, chan, now)
            self.kick()
            return
        for kind in CHANNELS:
            entries: list[tuple[float, int]] = []
            for m in self.msgs.values():
                c = m.chan(kind)
                if c is not None and not c.outstanding and not (m.held or m.deleted):
                    c.next_time = now
                    if m.fast is None or (m.fast.stage == FAST and not c.pass_start):
                        entries.append((now, m.msg_id))
            heapq.heapify(entries)
            self.heaps[kind] = entries
        self.kick()

    def delete(self, msg: Msg) -> None:
        """Remove a message without a bounce once its running deliveries report."""
        msg.deleted = True
        log(f"status: msg {msg.msg_id} deleted by the operator")
        self._purge_ready(msg)
        self._delete_if_idle(msg)

    def _purge_ready(self, msg: Msg) -> None:
        for kind in CHANNELS:
            ready = self.ready[kind]
            if any(j.msg is msg for j in ready):
                keep = deque(j for j in ready if j.msg is not msg)
                dropped = [j for j in ready if j.msg is msg]
                self.ready[kind] = keep
                for job in dropped:
                    self._drop_job(job)

    def _delete_if_idle(self, msg: Msg) -> None:
        if any(c.outstanding for c in msg.chans) or msg.finishing:
            return
        if msg.fast is not None:
            if msg.fast.stage == FAST:  # nothing written yet: clean removes todo and mess
                msg.finishing = True
                msg.chans.clear()
                self._remove(msg)
            return  # a spill waiting for clean's todo/N: deleted when it answers
        msg.finishing = True
        # bounce/N first: a crash after it can only deliver, never bounce, a
        # message the operator deleted
        durable.unlink_quiet(self.home.q("bounce", str(msg.msg_id)))
        for kind in CHANNELS:
            path = self.chan_path(msg, kind)
            self.dirty.discard(path)
            durable.unlink_quiet(path)
        msg.chans.clear()
        self._remove(msg)

    def _remove(self, msg: Msg) -> None:
        # info/S/N goes only once clean has removed mess/S/N (_on_clean): qmail
        # unlinks it first, and a crash between the two orphans mess/S/N until
        # a daily scan; this way a restart finds info/ and simply asks again
        if msg.fast is None or msg.held:
            durable.unlink_quiet(hold_path(self.home, msg.msg_id))
        self.msgs.pop(msg.msg_id, None)
        self.removing.add(msg.msg_id)
        if msg.fast is not None:
            # first attempt from todo/ done: todo/N first (the commit record),
            # then mess/S/N, in one request (clean/main.py)
            self._clean_request(b"done/%d" % msg.msg_id, msg)
        else:
            self._clean_request(b"foop/%d" % msg.msg_id, msg)
        log(f"end msg {msg.msg_id}")

    # -- completion and bounces ------------------------------------------------------
    def _finish(self, msg: Msg) -> None:
        if msg.finishing:
            return
        msg.finishing = True
        # the loop keeps only weak references to tasks: hold it until done
        task = asyncio.get_running_loop().create_task(self._finish_async(msg))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _finish_async(self, msg: Msg) -> None:
        bounce_path = self.home.q("bounce", str(msg.msg_id))
        while os.path.exists(bounce_path):
            if self._load_info(msg) and await self._send_bounce(msg, bounce_path):
                durable.unlink_quiet(bounce_path)
                break
            if self.stopping:
                return
            await asyncio.sleep(BOUNCE_RETRY_S)
        self._remove(msg)

    async def _send_bounce(self, msg: Msg, bounce_path: str) -> bool:
        assert msg.sender is not None
        try:
            with open(bounce_path, "rb") as fh:
                failures = parse_bounce_file(fh.read())
            try:
                with open(self.home.split_path("mess", msg.msg_id), "rb") as fh:
                    original = fh.read()
            except FileNotFoundError:
                # the body is gone (a crash between clean's removals): the
                # sender still learns which recipients failed, without it
                log(f"warning: mess for msg {msg.msg_id} is missing; bouncing without it")
                original = b""
        except OSError as exc:
            log(f"warning: unable to read the bounce of msg {msg.msg_id}: {exc}")
            return False  # tried again after BOUNCE_RETRY_S, the task stays alive
        bounce = build_bounce(
            self.cfg,
            sender=msg.sender,
            birth=msg.birth,
            failures=failures,
            original=original,
            now=time.time(),
        )
        if bounce is None:
            why = "triple bounce" if msg.sender == b"#@[]" else "double bounce"
            log(f"{why}: discarding bounce/{msg.msg_id}")
            return True
        text, envelope = bounce
        wire = env_fmt.format_wire(envelope)
        try:
            sub = await AsyncSubmission.open(self.home.writer_socket, b"bounce")
            await sub.write(text)
            res = await sub.finish(wire)
        except OSError as exc:
            log(f"warning: unable to queue bounce for msg {msg.msg_id}: {exc}")
            return False
        if res.status != "K":
            log(f"warning: unable to queue bounce for msg {msg.msg_id}: {res.text}")
            return res.status == "D"  # a permanent refusal will never succeed
        log(f"bounce msg {msg.msg_id} qp {res.msg_id}")
        return True

    # -- main loop ---------------------------------------------------------------------
    def _open_trigger(self) -> None:
        # O_RDWR keeps a writer on our own FIFO, so it never reports EOF
        self._trigger_fd = os.open(self.home.trigger, os.O_RDWR | os.O_NONBLOCK)
        asyncio.get_running_loop().add_reader(self._trigger_fd, self._on_trigger)

    def _on_trigger(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(self._trigger_fd, 4096)
        self.scan_todo = True
        self.kick()

    def on_alarm(self) -> None:
        self.retry(None)

    def on_hup(self) -> None:
        # every control file, not only locals and virtualdomains as qmail does;
        # work in hand is kept: passes, jobs and schedules are untouched
        try:
            self.cfg = SendConfig.load(self.home)
            log("status: reread control files")
        except Exception as exc:  # keep running on the old settings
            log(f"warning: unable to reread controls: {exc}")
        self.kick()

    async def run(self, stop: asyncio.Event) -> None:
        from pyqmail.send.control import ControlServer

        with contextlib.suppress(OSError):
            os.makedirs(self.home.q("hold"), mode=0o700, exist_ok=True)
        # before the first trigger: whatever is in todo/ now may have been
        # started by an earlier send
        self.inherited = {int(n) for n in os.listdir(self.home.q("todo")) if n.isdigit()}
        self._open_trigger()
        for link in (*self.links.values(), self.clean):
            link.start()
        control = ControlServer(self)
        await control.start()
        loader = asyncio.get_running_loop().create_task(self.load())
        last_scan = time.monotonic()
        while not stop.is_set():
            if self.scan_todo or time.monotonic() - last_scan > TODO_RESCAN_S:
                last_scan = time.monotonic()
                self.scan_todo = True
                self._refill_todo()
            if self.todo_backlog:
                await self.preprocess_todo()
            if self.spills:
                await self.commit_spills()
            if self.dirty:
                await self.sync_marks()
            if self.unlinks:
                paths, self.unlinks = self.unlinks, []
                unlink_later(paths)
            delay = self.start_due()
            self.dispatch()
            if self.todo_backlog or self.scan_todo:
                delay = 0.0  # more new mail to preprocess: come straight back
            self.wake.clear()
            waiter = asyncio.ensure_future(self.wake.wait())
            stopper = asyncio.ensure_future(stop.wait())
            await asyncio.wait(
                {waiter, stopper},
                timeout=delay if delay is not None else TODO_RESCAN_S,
                return_when=asyncio.FIRST_COMPLETED,
            )
            waiter.cancel()
            stopper.cancel()
        loader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loader
        await control.stop()
        await self.shutdown()

    async def shutdown(self) -> None:
        self.stopping = True
        deadline = time.monotonic() + STOP_GRACE_S
        while any(self.inflight.values()) and time.monotonic() < deadline:
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), 0.05)
        await self.sync_marks()
        _unlink_logged(self.unlinks)
        self.unlinks = []
        # keep retry times across the restart, as mtimes of the channel files
        for msg in self.msgs.values():
            for chan in msg.chans:
                if chan.next_time != chan.saved_time:
                    with contextlib.suppress(OSError):
                        path = self.chan_path(msg, chan.kind)
                        os.utime(path, (chan.next_time, chan.next_time))
        for link in (*self.links.values(), self.clean):
            await link.stop()
        log("status: exiting")


async def serve(home: Home) -> None:
    cfg = SendConfig.load(home)
    sender = Sender(home, cfg)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGALRM, sender.on_alarm)
    loop.add_signal_handler(signal.SIGHUP, sender.on_hup)
    await sender.run(stop)
