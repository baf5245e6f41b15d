"""Group commit (smtpsubmit.outbox.commit, smtpsubmit.outbox.records): the records of many
messages share one transaction, each keeps its own lease check, and a failed commit reaches
every sender that waited for it. Real stores throughout, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from smtpsubmit.outbox import Outbox
from smtpsubmit.outbox.commit import Committer
from smtpsubmit.outbox.store import (
    Begin,
    ClaimRequest,
    Finish,
    RecipientUpdate,
    Record,
    StoreError,
)
from tests.outbox_helpers import message


@pytest.fixture(params=["sqlite", "sqlite-row-by-row", "postgres"])
def box(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Outbox]:
    if request.param == "postgres":
        url = str(request.getfixturevalue("postgres_url"))
    else:
        url = f"sqlite:///{tmp_path}/outbox.db"
    outbox = Outbox(url)
    if request.param == "sqlite-row-by-row":  # what SQLite older than 3.33 runs
        outbox.store.batched_updates = False  # type: ignore[attr-defined]
    yield outbox
    outbox.close()


def sent(message_id: str, owner: str, now: float) -> Finish:
    update = RecipientUpdate(0, "sent", None, 250, "2.0.0 queued")
    return Finish(message_id, owner, [update], "sent", now, None, now)


def test_one_group_checks_each_lease_on_its_own(box: Outbox) -> None:
    """Four messages in one transaction: the two whose lease is still ours are written,
    the two another worker holds are left exactly as they were."""
    ids = box.enqueue_many([message(n, to=("a@example.org", "b@example.org")) for n in range(4)])
    now = time.time()
    mine = box.store.claim("me", 2, now, 60)
    theirs = box.store.claim("them", 2, now, 60)
    assert [c.id for c in mine + theirs] == ids
    records: list[Record] = [
        (None, Begin(ids[0], "me", [0], now, 60)),
        (None, Begin(ids[2], "me", [0, 1], now, 60)),  # not ours
        (sent(ids[3], "me", now), None),  # not ours
    ]
    assert box.store.record_many(records) == [(False, True), (False, False), (False, False)]
    both: Record = (sent(ids[0], "me", now), Begin(ids[1], "me", [1], now, 60))
    assert box.store.record_many([both]) == [(True, True)]
    shown = [box.show(i) or {} for i in ids]
    assert [s["state"] for s in shown] == ["sent", "sending", "sending", "sending"]
    assert [r["state"] for r in shown[0]["recipients"]] == ["sent", "queued"]  # b not updated
    assert shown[0]["recipients"][0]["reply"] == {"code": 250, "text": "2.0.0 queued"}
    assert [r["state"] for r in shown[1]["recipients"]] == ["queued", "sending"]
    for other in shown[2:]:
        assert [(r["state"], r["attempts"]) for r in other["recipients"]] == [("queued", 0)] * 2


class GatedStore:
    """Wraps a real store: the first commit waits until the test opens the gate."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.groups: list[int] = []

    def commit_group(self, records: Sequence[Record], claims: Sequence[ClaimRequest]) -> Any:
        self.groups.append(len(records) + len(claims))
        if len(self.groups) == 1:
            self.entered.set()
            assert self.gate.wait(10)
        return self.store.commit_group(records, claims)


def test_records_handed_over_during_a_commit_share_the_next_one(box: Outbox) -> None:
    ids = box.enqueue_many([message(n) for n in range(6)])
    now = time.time()
    box.store.claim("me", 6, now, 60)
    gated = GatedStore(box.store)
    finished: list[str] = []
    committer = Committer(gated, lambda f, ok: finished.append(f.message) if ok else None)  # type: ignore[arg-type]
    committer.start()
    try:
        first = committer.finish(sent(ids[0], "me", now))
        assert gated.entered.wait(10)  # the first commit is under way ...
        began: list[bool] = []

        def send(ident: str) -> None:
            began.append(committer.begin(Begin(ident, "me", [0], now, 60)))

        senders = [threading.Thread(target=send, args=(i,)) for i in ids[1:]]
        for thread in senders:
            thread.start()
        deadline = time.monotonic() + 10
        while len(committer._pending) < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not began  # ... and every sender waits for its sending to be durable
        gated.gate.set()
        for thread in senders:
            thread.join(10)
        assert first.wait() == (True, False)
    finally:
        committer.close()
    assert began == [True] * 5
    assert gated.groups == [1, 5]  # the five that waited rode one transaction
    assert finished == [ids[0]]
    assert [(box.show(i) or {})["state"] for i in ids] == ["sent"] + ["sending"] * 5


class FailingStore:
    def commit_group(self, records: Sequence[Record], claims: Sequence[ClaimRequest]) -> Any:
        raise StoreError("the database is away")


def test_a_failed_commit_reaches_every_sender_that_waited_for_it() -> None:
    committer = Committer(FailingStore(), lambda f, ok: None)  # type: ignore[arg-type]
    committer.start()
    try:
        with pytest.raises(StoreError, match="away"):
            committer.begin(Begin("m", "me", [0], time.time(), 60))
        with pytest.raises(StoreError, match="away"):
            committer.claim(ClaimRequest("me", 8, time.time(), 60))
        ticket = committer.finish(sent("m", "me", time.time()))
        with pytest.raises(StoreError, match="away"):
            ticket.wait()
    finally:
        committer.close()


def test_a_closed_committer_refuses_new_records() -> None:
    committer = Committer(FailingStore(), lambda f, ok: None)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="not running"):
        committer.finish(sent("m", "me", time.time()))
