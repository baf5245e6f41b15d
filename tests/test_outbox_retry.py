"""RetryPolicy: a pure function of (error, attempt, age) — every branch, no waiting."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smtpsubmit import (
    AuthError,
    ConnectError,
    DataRefused,
    DeliveryStatusUnknown,
    MessageError,
    ProtocolError,
    RecipientsRefused,
    Reply,
    SenderRefused,
    ServerDisconnected,
    SmtpTimeout,
    TlsError,
)
from smtpsubmit.outbox import Outcome, RetryPolicy
from smtpsubmit.outbox.retry import classify

DAY = 24 * 3600.0


def fixed(value: float):
    return lambda: value


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (Reply(450, "mailbox busy"), Outcome.TRANSIENT),
        (Reply(550, "no such user"), Outcome.PERMANENT),
        (ConnectError("refused"), Outcome.TRANSIENT),
        (SmtpTimeout("slow"), Outcome.TRANSIENT),
        (ServerDisconnected("gone before the dot"), Outcome.TRANSIENT),
        (DataRefused("no", reply=Reply(554, "spam")), Outcome.PERMANENT),
        (DataRefused("later", reply=Reply(451, "greylisted")), Outcome.TRANSIENT),
        (RecipientsRefused("all", refused={"a@x.org": Reply(450)}), Outcome.TRANSIENT),
        (RecipientsRefused("all", refused={"a@x.org": Reply(550)}), Outcome.PERMANENT),
        (DeliveryStatusUnknown("lost the answer"), Outcome.UNKNOWN),
        (MessageError("bad address"), Outcome.PERMANENT),
        # A broken route (not the message): wait for it to be fixed, never bounce.
        (
            AuthError("refused", reply=Reply(535, "bad credentials"), stage="auth"),
            Outcome.TRANSIENT,
        ),
        (TlsError("certificate expired", stage="starttls"), Outcome.TRANSIENT),
        (ProtocolError("garbage greeting", stage="greeting"), Outcome.TRANSIENT),
        (SenderRefused("no", reply=Reply(553, "not allowed"), stage="mail"), Outcome.PERMANENT),
    ],
)
def test_classify(error: object, outcome: Outcome) -> None:
    assert classify(error) is outcome  # type: ignore[arg-type]


def test_transient_backs_off_exponentially_up_to_max_delay() -> None:
    policy = RetryPolicy(first_delay=60, max_delay=3600, multiplier=2, jitter=0)
    delays = [policy.decide(Reply(451), n, 0.0).delay for n in range(1, 10)]
    assert delays == [60, 120, 240, 480, 960, 1920, 3600, 3600, 3600]
    assert all(policy.decide(Reply(451), n, 0.0).action == "retry" for n in range(1, 10))


def test_permanent_bounces_at_once_whatever_the_attempt_or_age() -> None:
    policy = RetryPolicy()
    for attempt in (1, 5, 50):
        decision = policy.decide(Reply(550, "no such user"), attempt, 10.0)
        assert decision.action == "bounce"
        assert decision.reason == "permanent failure"


@given(
    attempt=st.integers(1, 40),
    draw=st.floats(0.0, 1.0, exclude_max=True),
    jitter=st.floats(0.0, 0.9),
)
def test_jitter_stays_within_its_bounds(attempt: int, draw: float, jitter: float) -> None:
    policy = RetryPolicy(first_delay=30, max_delay=1800, multiplier=3, jitter=jitter)
    base = min(1800.0, 30.0 * 3.0 ** (attempt - 1))
    delay = policy.decide(ConnectError("down"), attempt, 0.0, random=fixed(draw)).delay
    assert base * (1 - jitter) - 1e-6 <= delay <= base * (1 + jitter) + 1e-6


def test_jitter_extremes_use_the_injected_random() -> None:
    policy = RetryPolicy(first_delay=100, jitter=0.2)
    assert policy.decide(Reply(421), 1, 0.0, random=fixed(0.0)).delay == pytest.approx(80.0)
    assert policy.decide(Reply(421), 1, 0.0, random=fixed(0.5)).delay == pytest.approx(100.0)
    assert policy.decide(Reply(421), 1, 0.0, random=fixed(0.999999)).delay == pytest.approx(120.0)


def test_max_age_expires_transient_failures() -> None:
    policy = RetryPolicy(jitter=0)
    assert policy.decide(Reply(451), 3, 4 * DAY - 1).action == "retry"
    expired = policy.decide(Reply(451), 3, 4 * DAY)
    assert (expired.action, expired.reason) == ("bounce", "expired")


def test_the_last_retry_lands_at_max_age_not_after() -> None:
    policy = RetryPolicy(first_delay=3600, max_delay=3600, jitter=0, max_age=7200)
    assert policy.decide(Reply(451), 1, 7000.0).delay == pytest.approx(200.0)


def test_max_age_accepts_a_timedelta() -> None:
    policy = RetryPolicy(max_age=timedelta(hours=2), jitter=0)
    assert policy.max_age_seconds == 7200.0
    assert policy.decide(Reply(451), 1, 7199.0).action == "retry"
    assert policy.decide(Reply(451), 1, 7200.0).action == "bounce"
    assert policy == RetryPolicy(max_age=7200.0, jitter=0)


def test_default_is_four_days_and_retry_once() -> None:
    policy = RetryPolicy()
    assert policy.max_age_seconds == 4 * DAY
    assert (policy.first_delay, policy.max_delay, policy.multiplier, policy.jitter) == (
        60.0,
        3600.0,
        2.0,
        0.2,
    )
    assert policy.on_unknown == "retry-once"


def test_unknown_is_resent_once_then_held() -> None:
    policy = RetryPolicy()
    first = policy.decide(DeliveryStatusUnknown("lost"), 1, 5.0, unknowns=1)
    assert (first.action, first.delay) == ("retry", 0.0)
    second = policy.decide(DeliveryStatusUnknown("lost"), 2, 5.0, unknowns=2)
    assert second.action == "hold"


def test_unknown_with_hold_is_never_resent() -> None:
    policy = RetryPolicy(on_unknown="hold")
    assert policy.decide(Outcome.UNKNOWN, 1, 0.0, unknowns=1).action == "hold"


def test_unknown_past_max_age_expires() -> None:
    assert RetryPolicy().decide(Outcome.UNKNOWN, 1, 5 * DAY, unknowns=1).action == "bounce"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"on_unknown": "always"},
        {"jitter": 1.0},
        {"jitter": -0.1},
        {"first_delay": 10, "max_delay": 5},
        {"multiplier": 0.5},
        {"max_age": 0},
        {"max_age": timedelta(0)},
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)  # type: ignore[arg-type]


def test_decide_is_pure() -> None:
    policy = RetryPolicy()
    calls = [policy.decide(Reply(451), 4, 100.0, random=fixed(0.3)) for _ in range(3)]
    assert calls[0] == calls[1] == calls[2]


def test_the_outbox_names_are_exported_from_the_package() -> None:
    import smtpsubmit
    import smtpsubmit.outbox

    for name in ("Outbox", "AsyncOutbox", "RetryPolicy"):
        assert getattr(smtpsubmit, name) is getattr(smtpsubmit.outbox, name)
        assert name in smtpsubmit.__all__
