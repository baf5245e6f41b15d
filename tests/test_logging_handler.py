"""MailHandler: never blocks the logging thread, one digest per interval, bounded loss."""

from __future__ import annotations

import email
import email.policy
import logging
import logging.config
import time
from collections.abc import Iterator

import pytest

from smtpsubmit import Server
from smtpsubmit.logging import MailHandler
from smtpsubmit.transports import MemoryTransport
from tests.servers.aiosmtpd_server import AiosmtpdServer


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    log = logging.getLogger(f"app.{time.monotonic_ns()}")
    log.propagate = False
    log.setLevel(logging.DEBUG)
    yield log
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()


def body(raw: bytes) -> str:
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    part = parsed.get_body(preferencelist=("plain",))
    assert part is not None
    return str(part.get_content())


def test_records_arrive_as_one_digest_on_flush(
    aiosmtpd_server: AiosmtpdServer, logger: logging.Logger
) -> None:
    handler = MailHandler(
        Server(aiosmtpd_server.host, port=aiosmtpd_server.port),
        "app@example.org",
        "ops@example.org",
        subject="app errors",
        interval=3600,
    )
    logger.addHandler(handler)
    for i in range(5):
        logger.error("failure number %d", i)
    logger.info("below the handler's level")
    assert aiosmtpd_server.messages == []  # buffered, not sent per record
    handler.flush()
    (received,) = aiosmtpd_server.wait_for(1)
    text = body(received.original_content)
    assert [f"failure number {i}" in text for i in range(5)] == [True] * 5
    assert "below the handler's level" not in text
    assert b"Subject: app errors (5 records)" in received.original_content
    assert received.rcpt_tos == ["ops@example.org"]


def test_emit_never_waits_for_a_server_that_does_not_answer(
    silent_port: int, logger: logging.Logger
) -> None:
    handler = MailHandler(
        Server("127.0.0.1", port=silent_port, timeout=1),
        "app@example.org",
        "ops@example.org",
        interval=0.05,
    )
    logger.addHandler(handler)
    logger.error("first")  # starts the sender thread, which then hangs on the greeting
    time.sleep(0.3)
    started = time.perf_counter()
    for i in range(200):
        logger.error("while the sender is stuck %d", i)
    assert time.perf_counter() - started < 0.5  # 200 records, no network wait in emit
    logger.removeHandler(handler)
    memory = MemoryTransport()
    handler._target = memory  # the server never answers: deliver the rest somewhere real
    handler.close()  # waits for the stuck send to time out (1 s), then sends what is left
    assert handler._thread is not None and not handler._thread.is_alive()
    assert sum(body(m.raw).count("while the sender is stuck") for m in memory.outbox) == 200


def test_one_digest_per_interval_at_most(logger: logging.Logger) -> None:
    memory = MemoryTransport()
    handler = MailHandler(memory, "app@example.org", "ops@example.org", interval=0.2)
    logger.addHandler(handler)
    deadline = time.monotonic() + 1.0
    count = 0
    while time.monotonic() < deadline:
        logger.error("storm %d", count)
        count += 1
        time.sleep(0.001)
    handler.close()
    total = sum(body(m.raw).count("storm ") for m in memory.outbox)
    assert total == count  # every record delivered
    assert 3 <= len(memory.outbox) <= 7  # ~1 s / 0.2 s, plus the one close() sends


class FlakyTransport(MemoryTransport):
    """Refuses to send until ``up`` is set, as a server outage would."""

    up = False

    def send(self, message, **envelope):  # type: ignore[no-untyped-def]
        if not self.up:
            raise ConnectionRefusedError("server down")
        return super().send(message, **envelope)


def test_outage_keeps_records_up_to_capacity_and_counts_the_rest(
    logger: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    transport = FlakyTransport()
    handler = MailHandler(transport, "app@example.org", "ops@example.org", capacity=3)
    logger.addHandler(handler)
    for i in range(10):
        logger.error("record %d", i)
    handler.flush()  # fails: nothing raised into the application
    handler.flush()
    err = capsys.readouterr().err
    assert err.count("MailHandler") == 1  # announced once, not per record or per try
    transport.up = True
    handler.flush()
    (digest,) = transport.outbox
    text = body(digest.raw)
    assert [f"record {i}" in text for i in range(10)] == [False] * 7 + [True] * 3
    assert "7 earlier record(s) dropped" in text


def test_own_sending_is_never_mailed_through_the_handler(
    aiosmtpd_server: AiosmtpdServer,
) -> None:
    root = logging.getLogger()
    handler = MailHandler(
        Server(aiosmtpd_server.host, port=aiosmtpd_server.port),
        "app@example.org",
        "ops@example.org",
        level=logging.DEBUG,
        interval=3600,
    )
    old_level = root.level
    root.setLevel(logging.DEBUG)
    root.addHandler(handler)
    try:
        logging.getLogger("app").error("the one record")
        handler.flush()  # the transcript logs C:/S: lines at DEBUG meanwhile
        handler.flush()
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        handler.close()
    (received,) = aiosmtpd_server.wait_for(1)
    time.sleep(0.1)
    assert len(aiosmtpd_server.messages) == 1
    text = body(received.original_content)
    assert "the one record" in text and "C: " not in text and "S: " not in text


def test_dictconfig_with_a_server_url(aiosmtpd_server: AiosmtpdServer) -> None:
    name = f"cfg.{time.monotonic_ns()}"
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "handlers": {
                "mail": {
                    "class": "smtpsubmit.logging.MailHandler",
                    "server_or_transport": f"smtp://{aiosmtpd_server.host}:{aiosmtpd_server.port}",
                    "sender": "app@example.org",
                    "recipients": ["ops@example.org", "dev@example.org"],
                    "level": "WARNING",
                    "interval": 3600,
                }
            },
            "loggers": {name: {"handlers": ["mail"], "propagate": False}},
        }
    )
    log = logging.getLogger(name)
    log.warning("configured by dictConfig")
    (handler,) = log.handlers
    try:
        handler.flush()
        (received,) = aiosmtpd_server.wait_for(1)
        assert received.rcpt_tos == ["ops@example.org", "dev@example.org"]
        assert "configured by dictConfig" in body(received.original_content)
    finally:
        log.removeHandler(handler)
        handler.close()


def test_bad_arguments_fail_at_construction() -> None:
    with pytest.raises(ValueError):
        MailHandler(MemoryTransport(), "not an address", "ops@example.org")
    with pytest.raises(ValueError):
        MailHandler(MemoryTransport(), "app@example.org", "ops@example.org", interval=0)
