"""pyqmail queue: look at and steer the queue while the MTA runs.

``list`` and ``show`` only read queue files (as qmail-qread does, which qmail
documents as safe while qmail-send runs). ``hold``, ``release``, ``delete``
and ``retry`` never touch the queue: they ask send over its control socket
(ipc/control_proto.py), so the program that owns the schedule makes every
change. Exit codes: 0 done, 100 refused (no such message...), 111 try
again (send not running, message not yet preprocessed).
"""

from __future__ import annotations

import argparse
import sys

from pyqmail.config import Home
from pyqmail.ipc.control_proto import request
from pyqmail.listing import Classify, describe, queued_ids, todo_ids

EXIT = {"K": 0, "D": 100, "Z": 111}
SHOW_LIMIT = 1 << 30


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("queue", help="list, show, hold, release, delete or retry messages")
    p.add_argument("action", choices=["list", "show", "delete", "retry", "hold", "release"])
    p.add_argument("id", nargs="?", type=int, help="message id (#N in the listing)")
    p.add_argument("--home")
    p.set_defaults(func=cmd_queue)


def cmd_queue(args: argparse.Namespace) -> int:
    home = Home.from_env(args.home)
    action: str = args.action
    msg_id: int | None = args.id
    if action == "list":
        return _list(home)
    if msg_id is None and action != "retry":
        print(f"pyqmail queue {action}: a message id is needed", file=sys.stderr)
        return 100
    if action == "show":
        assert msg_id is not None
        return _show(home, msg_id)
    reply = request(home.socket("send"), action, msg_id)
    for line in reply.output:
        print(line)
    if reply.status == "K":
        print(reply.text)
    else:
        print(f"pyqmail queue {action}: {reply.text}", file=sys.stderr)
    return EXIT[reply.status]


def _classifier(home: Home) -> Classify | None:
    """Recipients of a message with only todo/N, channelled as send will;
    None (such messages are left out) when the controls cannot be read."""
    from pyqmail.config import SendConfig
    from pyqmail.formats.control import ControlError
    from pyqmail.send.classify import classify

    try:
        cfg = SendConfig.load(home)
    except (OSError, ControlError) as exc:
        print(f"pyqmail queue: messages in todo/ left out: {exc}", file=sys.stderr)
        return None
    return lambda rcpt: classify(rcpt, cfg)


def _list(home: Home) -> int:
    try:
        ids = sorted(set(queued_ids(home)) | set(todo_ids(home)))
    except OSError as exc:
        print(f"pyqmail queue list: unable to read the queue: {exc}", file=sys.stderr)
        return 111
    classify = _classifier(home)
    for msg_id in ids:
        lines = describe(home, msg_id, classify=classify)
        if lines:
            print("\n".join(lines))
    return 0


def _show(home: Home, msg_id: int) -> int:
    lines = describe(home, msg_id, classify=_classifier(home))
    if lines is None:
        print(f"pyqmail queue show: no message {msg_id} in the queue", file=sys.stderr)
        return 100
    print("\n".join(lines))
    reply = request(home.socket("send"), "when", msg_id, timeout=10)
    if reply.status == "K":
        for line in reply.output:
            print(line)
    else:
        print(f"schedule unknown: {reply.text}")
    print()
    sys.stdout.flush()
    try:
        with open(home.split_path("mess", msg_id), "rb") as fh:
            sys.stdout.buffer.write(fh.read(SHOW_LIMIT))
    except OSError as exc:
        print(f"pyqmail queue show: message {msg_id}: {exc}", file=sys.stderr)
        return 111
    sys.stdout.buffer.flush()
    return 0
