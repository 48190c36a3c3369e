"""Which .qmail file: dash extensions, -default order, the alias user, virtualdomains,
owner addresses and the helper programs, end to end through SMTP (qmail-files §3-§5)."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.deliveries import send, wait_result
from tests.harness import init_home, pyqmail, running_mta, wait_until, write_control

BODY = b"Subject: lookup\r\n\r\nbody\r\n"


def _user(home: Path, name: str) -> Path:
    assert pyqmail("adduser", name, "--home", str(home)).returncode == 0
    return home / "mailboxes" / name


def _marker(name: str) -> str:
    # each file records which file ran and what DEFAULT it was given
    return f'|mkdir -p hits && echo "{name} $DEFAULT $LOCAL" > "hits/$EXT"\n'


def test_extension_lookup_order_alias_and_virtualdomains(tmp_path: Path) -> None:
    home = tmp_path / "qmail"
    init_home(home)
    write_control(home, "rcpthosts", "localhost\nvirt.example\n")
    write_control(home, "virtualdomains", "virt.example:dave\n")
    # other@localhost must reach local delivery to bounce there: without this
    # smtpd's RCPT-time check would refuse it with 550 (see test_smtpd_esmtp)
    write_control(home, "rcptcheck", "0\n")
    dave = _user(home, "dave")
    for name in (".qmail-a-b-c", ".qmail-a-b-default", ".qmail-a-default", ".qmail-default"):
        (dave / name).write_text(_marker(name))
    alias = home / "alias"
    (alias / ".qmail-nosuch").write_text(_marker(".qmail-nosuch"))
    rcpts = [
        "dave-a-b-c@localhost",
        "dave-A-B-X@localhost",
        "dave-a-y@localhost",
        "dave-z@localhost",
        "dave-a-b-@localhost",
        "Info@virt.example",
        "nosuch@localhost",
    ]
    with running_mta(home) as mta:
        send(mta, "s@example.org", [*rcpts, "other@localhost"], BODY)
        # send logs the local recipient after the virtualdomains prefix
        logged = [r for r in rcpts if r != "Info@virt.example"] + ["dave-Info@virt.example"]
        outcome = {r: wait_result(mta, r) for r in logged}
        missing = wait_result(mta, "other@localhost")
    hits = {p.name: p.read_text() for p in (dave / "hits").iterdir()}
    assert hits == {
        "a-b-c": ".qmail-a-b-c  dave-a-b-c\n",  # exact file: DEFAULT unset
        "A-B-X": ".qmail-a-b-default X dave-A-B-X\n",  # longest default, case kept
        "a-y": ".qmail-a-default y dave-a-y\n",
        "z": ".qmail-default z dave-z\n",
        "a-b-": ".qmail-a-b-default  dave-a-b-\n",
        "Info": ".qmail-default Info dave-Info\n",  # virtualdomains prefixed the local part
    }
    assert (alias / "hits" / "nosuch").read_text() == ".qmail-nosuch  nosuch\n"
    assert {r: o[0] for r, o in outcome.items()} == dict.fromkeys(logged, "success")
    assert missing == ("failure", "Sorry, no mailbox here by that name. (#5.1.1)")


def test_owner_addresses_and_helper_programs(tmp_path: Path) -> None:
    home = tmp_path / "qmail"
    init_home(home)
    _user(home, "alice")
    erin = _user(home, "erin")
    (erin / ".qmail-list").write_text("&alice@localhost\n")
    (erin / ".qmail-list-owner").write_text("./Maildir/\n")
    (erin / ".qmail-vlist").write_text("&alice@localhost\n")
    (erin / ".qmail-vlist-owner").write_text("./Maildir/\n")
    (erin / ".qmail-vlist-owner-default").write_text("./Maildir/\n")
    (erin / ".qmail-fwd").write_text("|forward alice@localhost\n")
    (erin / ".qmail-cond").write_text(
        "|condredirect alice@localhost grep -q redirect-me\n./cond/\n"
    )
    (erin / ".qmail-bounce").write_text('|bouncesaying "This list is closed."\n')
    (erin / ".qmail-except").write_text("|except grep -q spam\n./except/\n")
    (erin / ".qmail-pre").write_text("|preline -d cat > preline.out\n")
    (erin / ".qmail-receipt").write_text("|qreceipt erin-receipt@localhost\n./Maildir/\n")
    _user(home, "frank")
    for md in ("cond", "except"):
        for sub in ("tmp", "new", "cur"):
            (erin / md / sub).mkdir(parents=True)
    pm = "postmaster@localhost"
    with running_mta(home) as mta:
        send(mta, pm, ["erin-list@localhost", "erin-vlist@localhost", "erin-fwd@localhost"], BODY)
        send(mta, pm, ["erin-cond@localhost", "erin-except@localhost"], BODY + b"redirect-me\r\n")
        send(mta, pm, ["erin-cond@localhost", "erin-except@localhost"], BODY)
        send(mta, pm, ["erin-bounce@localhost", "erin-pre@localhost"], BODY)
        send(mta, pm, ["erin-except@localhost"], BODY + b"spam\r\n")
        asking = b"Notice-Requested-Upon-Delivery-To: Erin <erin-receipt@localhost>\r\n"
        send(mta, "frank@localhost", ["erin-receipt@localhost"], asking + BODY)
        (receipt,) = mta.wait_for_maildir("frank")
        got = [p.read_bytes() for p in mta.wait_for_maildir("alice", 4)]
        bounces = mta.wait_for_maildir("postmaster", 2)
        wait_until(mta.queue_empty, 30, "the queue to empty")
    # owner rule: NEWSENDER is LOCAL-owner@HOST, or the VERP form with -owner-default
    paths = sorted(m.split(b"\n", 1)[0] for m in got)
    assert paths == sorted(
        [
            b"Return-Path: <erin-list-owner@localhost>",
            b"Return-Path: <erin-vlist-owner-alice=localhost@localhost>",
            b"Return-Path: <postmaster@localhost>",  # forward: NEWSENDER, no owner file
            b"Return-Path: <postmaster@localhost>",  # condredirect: SENDER
        ]
    )
    assert all(b"\nDelivered-To: erin-" in m for m in got)  # DTLINE on every forward
    texts = b"".join(b.read_bytes() for b in bounces)
    assert b"This list is closed." in texts
    assert b"<erin-except@localhost>" in texts
    # condredirect: the matching message went to alice only, the other one stayed
    (kept,) = list((erin / "cond" / "new").iterdir())
    assert b"redirect-me" not in kept.read_bytes()
    # except: "spam" bounced, the other two were delivered
    assert len(list((erin / "except" / "new").iterdir())) == 2
    # qreceipt: a success notice to the sender, from the null sender
    notice = receipt.read_bytes()
    assert notice.startswith(b"Return-Path: <>\n")
    assert b"Subject: success notice\n" in notice
    assert b"following address: erin-receipt@localhost. Thanks for asking." in notice
    # preline: From_ and Return-Path lines first, Delivered-To left out by -d
    pre = (erin / "preline.out").read_bytes()
    assert pre.startswith(b"From postmaster@localhost ")
    assert pre.split(b"\n")[1] == b"Return-Path: <postmaster@localhost>"
    assert b"Delivered-To:" not in pre.split(b"\n\n")[0].split(b"\n", 2)[2]
