"""qmail-send: preprocess new messages, schedule deliveries, retry, bounce.

Runs as: qmails (the invoking user in embedded mode).
Reads:   control/{me,locals,percenthack,virtualdomains,envnoathost,bouncefrom,
         bouncehost,doublebounceto,doublebouncehost,concurrencylocal,
         concurrencyremote,queuelifetime,remotebatch}; queue/todo, queue/mess.
Writes:  queue/info, queue/local, queue/remote, queue/bounce. Never todo/ or
         mess/: qmail-clean removes those. New messages (bounces) go through
         the queue writer like everyone else's.
Trusts:  the queue files (written by the queue writer and by itself); reports
         from lspawn/rspawn are parsed strictly and truncated.

Theory of operation (qmail-files §6):
  todo/N -> info/S/N + local/S/N + remote/S/N (fsynced) -> clean removes
  todo/N: that removal is the commit point of preprocessing. A crash before
  it means the message is preprocessed again from scratch, with every local
  delivery flagged as "maybe done" so lspawn looks for its earlier copy.
  Each finished recipient has the first byte of its record flipped from T to
  D. When both channel files are gone the bounce (if any) is queued, info is
  removed and clean removes mess/S/N.
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
from dataclasses import dataclass, field

from pyqmail.config import SPLIT, Home, SendConfig
from pyqmail.formats import envelope as env_fmt
from pyqmail.formats.address import domain_of, strip_verp, verp_sender
from pyqmail.formats.qsbmf import Failure, format_bounce, format_bounce_record, parse_bounce_file
from pyqmail.ipc.links import Link
from pyqmail.ipc.queue_proto import AsyncSubmission
from pyqmail.send.classify import classify, next_retry, strip_virtual
from pyqmail.unix import durable
from pyqmail.unix.logfmt import clean as logclean
from pyqmail.unix.logfmt import log

TODO_RESCAN_S = 25 * 60
STOP_GRACE_S = 3.0
REPORT_LIMIT = 10000
BOUNCE_RETRY_S = 60.0
CHANNELS = ("local", "remote")


@dataclass(slots=True)
class Rec:
    addr: bytes
    offset: int
    done: bool
    tried: bool = False


@dataclass(slots=True)
class Chan:
    kind: str
    path: str
    recs: list[Rec]
    next_time: float
    outstanding: int = 0
    pass_start: float = 0.0
    final: bool = False


@dataclass(slots=True)
class Msg:
    msg_id: int
    birth: float
    sender: bytes
    chans: dict[str, Chan]
    maybe_done: bool
    finishing: bool = False


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
        self._finishing: set[asyncio.Task[None]] = set()
        self.heap: list[tuple[float, int, str]] = []
        self.ready: dict[str, deque[Job]] = {c: deque() for c in CHANNELS}
        self.inflight: dict[str, dict[bytes, Job]] = {c: {} for c in CHANNELS}
        self.awaiting_clean: dict[bytes, Msg | None] = {}
        self.clean_backlog: list[bytes] = []
        self.preprocessing: set[int] = set()
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

    # -- helpers ------------------------------------------------------------
    def kick(self) -> None:
        self.wake.set()

    def concurrency(self, kind: str) -> int:
        return self.cfg.concurrencylocal if kind == "local" else self.cfg.concurrencyremote

    def status(self) -> None:
        log(
            f"status: local {len(self.inflight['local'])}/{self.cfg.concurrencylocal} "
            f"remote {len(self.inflight['remote'])}/{self.cfg.concurrencyremote}"
        )

    def schedule(self, msg: Msg, chan: Chan, when: float) -> None:
        chan.next_time = when
        heapq.heappush(self.heap, (when, msg.msg_id, chan.kind))

    # -- start-up ---------------------------------------------------------------
    def load(self) -> None:
        """Rebuild in-memory state from info/ and the channel files."""
        todo = set(os.listdir(self.home.q("todo")))
        count = 0
        for sub in range(SPLIT):
            for name in os.listdir(self.home.q("info", str(sub))):
                if not name.isdigit() or name in todo:
                    continue  # todo/N still there: preprocess again from scratch
                msg = self._load_one(int(name))
                if msg is not None:
                    count += 1
        log(f"status: loaded {count} queued message(s)")

    def _load_one(self, msg_id: int) -> Msg | None:
        info_path = self.home.split_path("info", msg_id)
        try:
            st = os.stat(info_path)
            with open(info_path, "rb") as fh:
                info = env_fmt.parse_todo(fh.read(1 << 16))
        except (OSError, env_fmt.EnvelopeError) as exc:
            log(f"warning: unable to read {info_path}: {exc}")
            return None
        msg = Msg(msg_id, st.st_mtime, info.sender, {}, maybe_done=True)
        for kind in CHANNELS:
            path = self.home.split_path(kind, msg_id)
            try:
                with open(path, "rb") as fh:
                    data = fh.read()
                mtime = os.stat(path).st_mtime
            except FileNotFoundError:
                continue
            recs = [
                Rec(addr, off, done, tried=True)
                for (done, addr), off in zip(
                    env_fmt.parse_channel(data), env_fmt.channel_offsets(data), strict=True
                )
            ]
            chan = Chan(kind, path, recs, mtime)
            msg.chans[kind] = chan
            self.schedule(msg, chan, mtime)
        self.msgs[msg_id] = msg
        if not msg.chans:
            self._finish(msg)
        return msg

    # -- preprocessing ----------------------------------------------------------
    async def preprocess_todo(self) -> None:
        self.scan_todo = False
        try:
            names = os.listdir(self.home.q("todo"))
        except OSError as exc:
            log(f"alert: cannot read todo: {exc}")
            return
        batch: list[Msg] = []
        dirs: set[str] = set()
        fds: list[int] = []
        try:
            for name in names:
                if not name.isdigit():
                    continue
                msg_id = int(name)
                if msg_id in self.preprocessing or msg_id in self.msgs:
                    continue
                self.preprocessing.add(msg_id)
                try:
                    msg = self._preprocess_one(msg_id, dirs, fds)
                finally:
                    self.preprocessing.discard(msg_id)
                if msg is not None:
                    batch.append(msg)
            if not batch:
                return
            # info and channel files, then their directories, before clean may
            # remove todo/N (the commit point of preprocessing)
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, durable.fsync_fds, fds)
            await loop.run_in_executor(None, durable.fsync_dirs, dirs)
        finally:
            for fd in fds:
                os.close(fd)
        for msg in batch:
            self.preprocessing.add(msg.msg_id)
            self._clean_request(b"todo/%d" % msg.msg_id, msg)

    def _preprocess_one(self, msg_id: int, dirs: set[str], fds: list[int]) -> Msg | None:
        todo_path = self.home.q("todo", str(msg_id))
        try:
            with open(todo_path, "rb") as fh:
                todo = env_fmt.parse_todo(fh.read())
            size = os.stat(self.home.split_path("mess", msg_id)).st_size
        except FileNotFoundError:
            return None
        except (OSError, env_fmt.EnvelopeError) as exc:
            log(f"warning: trouble with todo/{msg_id}: {exc}")
            return None
        log(f"new msg {msg_id}")
        sender = logclean(todo.sender.decode("utf-8", "replace"))
        log(f"info msg {msg_id}: bytes {size} from <{sender}> qp {todo.pid} uid {todo.uid}")
        maybe_done = False
        for kind in ("info", *CHANNELS):
            maybe_done |= durable.unlink_quiet(self.home.split_path(kind, msg_id))
        lists: dict[str, list[bytes]] = {c: [] for c in CHANNELS}
        for rcpt in todo.recipients:
            kind, addr = classify(rcpt, self.cfg)
            lists[kind].append(addr)
        info_path = self.home.split_path("info", msg_id)
        info = env_fmt.QueuedEnvelope(todo.uid, todo.pid, todo.sender, ())
        fds.append(durable.create_exclusive(info_path))
        durable.write_all(fds[-1], env_fmt.format_todo(info))
        dirs.add(os.path.dirname(info_path))
        now = time.time()
        birth = os.fstat(fds[-1]).st_mtime
        msg = Msg(msg_id, birth, todo.sender, {}, maybe_done)
        for kind in CHANNELS:
            if not lists[kind]:
                continue
            path = self.home.split_path(kind, msg_id)
            data = b"".join(b"T" + a + b"\0" for a in lists[kind])
            fds.append(durable.create_exclusive(path))
            durable.write_all(fds[-1], data)
            dirs.add(os.path.dirname(path))
            offsets = env_fmt.channel_offsets(data)
            msg.chans[kind] = Chan(
                kind,
                path,
                [Rec(a, o, False) for a, o in zip(lists[kind], offsets, strict=True)],
                now,
            )
        return msg

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
        if cmd.startswith(b"todo/") and msg is not None:
            self.preprocessing.discard(msg.msg_id)
            if result != b"+":
                return  # todo/N stays; it will be preprocessed again
            self.msgs[msg.msg_id] = msg
            if not msg.chans:
                self._finish(msg)
            for chan in msg.chans.values():
                self.schedule(msg, chan, time.time())
            self.kick()

    # -- passes and jobs -----------------------------------------------------------
    def start_due(self) -> float | None:
        now = time.time()
        while self.heap:
            when, msg_id, kind = self.heap[0]
            if when > now:
                return when - now
            heapq.heappop(self.heap)
            msg = self.msgs.get(msg_id)
            chan = msg.chans.get(kind) if msg else None
            if msg is None or chan is None or chan.outstanding or chan.next_time != when:
                continue
            self._start_pass(msg, chan, now)
        return None

    def _start_pass(self, msg: Msg, chan: Chan, now: float) -> None:
        chan.pass_start = now
        chan.final = now > msg.birth + self.cfg.queuelifetime
        todo = [r for r in chan.recs if not r.done]
        jobs: list[Job] = []
        if chan.kind == "local":
            jobs = [Job(b"", msg, chan, [r], verp_sender(msg.sender, r.addr)) for r in todo]
        else:
            groups: dict[tuple[str, bytes], list[Rec]] = {}
            for r in todo:
                snd = verp_sender(msg.sender, r.addr)
                groups.setdefault((domain_of(r.addr), snd), []).append(r)
            size = self.cfg.remote_batch
            for (_dom, snd), recs in groups.items():
                jobs.extend(
                    Job(b"", msg, chan, recs[i : i + size], snd) for i in range(0, len(recs), size)
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
        for i, rec in enumerate(job.recs):
            res = results[i] if i < len(results) else b"Zreport mangled, will defer"
            self._record(job, rec, job.dnums[i], res[:1], res[1:REPORT_LIMIT])
        job.chan.outstanding -= 1
        if job.chan.outstanding == 0:
            self._pass_done(job.msg, job.chan)
        self.status()
        self.kick()

    def _record(self, job: Job, rec: Rec, dnum: int, status: bytes, text: bytes) -> None:
        msg, chan = job.msg, job.chan
        shown = logclean(text.decode("utf-8", "replace"))
        if status == b"Z" and chan.final:
            status = b"D"
            text = text.rstrip(b"\n") + (
                b"\nI'm not going to try again; this message has been in the queue too long.\n"
            )
        if status == b"K":
            log(f"delivery {dnum}: success: {shown}")
        elif status == b"D":
            log(f"delivery {dnum}: failure: {shown}")
            rcpt = strip_virtual(rec.addr, self.cfg)
            with open(self.home.q("bounce", str(msg.msg_id)), "ab") as fh:
                fh.write(format_bounce_record(Failure(rcpt, text)))
        else:
            if status != b"Z":
                log(f"delivery {dnum}: report mangled, will defer")
            else:
                log(f"delivery {dnum}: deferral: {shown}")
            return
        rec.done = True
        try:
            fd = os.open(chan.path, os.O_WRONLY)
            try:
                os.pwrite(fd, b"D", rec.offset)
            finally:
                os.close(fd)
            self.dirty.add(chan.path)
        except OSError as exc:
            log(f"warning: trouble marking {chan.path}: {exc}; will be delivered twice!")

    def sync_marks(self) -> None:
        """fsync every channel file marked since the last call (one batch per loop turn)."""
        dirty, self.dirty = self.dirty, set()
        for path in dirty:
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue  # finished and unlinked: nothing left to redo
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def _pass_done(self, msg: Msg, chan: Chan) -> None:
        if all(r.done for r in chan.recs):
            self.dirty.discard(chan.path)
            durable.unlink_quiet(chan.path)
            del msg.chans[chan.kind]
            if not msg.chans:
                self._finish(msg)
            return
        self.schedule(msg, chan, next_retry(msg.birth, chan.pass_start, chan.kind))

    # -- completion and bounces ------------------------------------------------------
    def _finish(self, msg: Msg) -> None:
        if msg.finishing:
            return
        msg.finishing = True
        # the loop keeps only a weak reference to a task: without this one a
        # finishing message (its bounce, its end) can be garbage-collected mid-way
        task = asyncio.get_running_loop().create_task(self._finish_async(msg))
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)

    async def _finish_async(self, msg: Msg) -> None:
        bounce_path = self.home.q("bounce", str(msg.msg_id))
        while os.path.exists(bounce_path):
            if await self._send_bounce(msg, bounce_path):
                durable.unlink_quiet(bounce_path)
                break
            if self.stopping:
                return
            await asyncio.sleep(BOUNCE_RETRY_S)
        durable.unlink_quiet(self.home.split_path("info", msg.msg_id))
        self.msgs.pop(msg.msg_id, None)
        self._clean_request(b"foop/%d" % msg.msg_id, None)
        log(f"end msg {msg.msg_id}")

    async def _send_bounce(self, msg: Msg, bounce_path: str) -> bool:
        with open(bounce_path, "rb") as fh:
            failures = parse_bounce_file(fh.read())
        if msg.sender == b"#@[]":
            log(f"triple bounce: discarding bounce/{msg.msg_id}")
            return True
        with open(self.home.split_path("mess", msg.msg_id), "rb") as fh:
            original = fh.read()
        double = msg.sender == b""
        cfg = self.cfg
        to = (
            f"{cfg.doublebounceto}@{cfg.doublebouncehost}".encode()
            if double
            else strip_verp(msg.sender)
        )
        text = format_bounce(
            now=time.time(),
            bouncefrom=cfg.bouncefrom.encode(),
            bouncehost=cfg.bouncehost.encode(),
            to=to,
            failures=failures,
            original_sender=msg.sender,
            original=original,
            double=double,
        )
        wire = env_fmt.format_wire(env_fmt.Envelope(b"#@[]" if double else b"", (to,)))
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
        now = time.time()
        for msg in self.msgs.values():
            for chan in msg.chans.values():
                if not chan.outstanding:
                    self.schedule(msg, chan, now)
        self.kick()

    def on_hup(self) -> None:
        try:
            self.cfg = SendConfig.load(self.home)
            log("status: reread control files")
        except Exception as exc:  # keep running on the old settings
            log(f"warning: unable to reread controls: {exc}")

    async def run(self, stop: asyncio.Event) -> None:
        self._open_trigger()
        self.load()
        for link in (*self.links.values(), self.clean):
            link.start()
        last_scan = time.monotonic()
        while not stop.is_set():
            if self.scan_todo or time.monotonic() - last_scan > TODO_RESCAN_S:
                last_scan = time.monotonic()
                await self.preprocess_todo()
            self.sync_marks()
            delay = self.start_due()
            self.dispatch()
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
        await self.shutdown()

    async def shutdown(self) -> None:
        self.stopping = True
        deadline = time.monotonic() + STOP_GRACE_S
        while any(self.inflight.values()) and time.monotonic() < deadline:
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), 0.05)
        self.sync_marks()
        # keep retry times across the restart, as mtimes of the channel files
        for msg in self.msgs.values():
            for chan in msg.chans.values():
                with contextlib.suppress(OSError):
                    os.utime(chan.path, (chan.next_time, chan.next_time))
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
