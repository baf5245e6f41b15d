"""Both drivers against the scripted fake server: exact commands, faults, semantics.

Every scenario runs through the sync Client and the AsyncClient (``driver``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from typing import Any

import pytest

from smtpsubmit import (
    AsyncClient,
    Capabilities,
    Client,
    ConnectError,
    DataRefused,
    DeliveryStatusUnknown,
    ExtensionUnavailable,
    MessageError,
    MessageTooLarge,
    Option,
    ProtocolError,
    RecipientsRefused,
    SenderRefused,
    Server,
    ServerDisconnected,
    SmtpTimeout,
    SubmitResult,
)
from tests.drivers import RAW, call, server_for
from tests.servers.fakesmtp import (
    Close,
    Delay,
    Expect,
    ReadBytes,
    ReadData,
    Reset,
    Responder,
    Send,
    Silent,
    StopReading,
    Trickle,
    ehlo_reply,
    steps_to_data,
)

SENDER = "a@example.org"
RCPT = ["b@example.org"]


def test_exact_command_sequence_without_pipelining(driver: Any, fake_smtp: Any) -> None:
    fake = fake_smtp(
        [
            Send(b"220 fake ESMTP\r\n"),
            Expect(rb"EHLO client\.test"),
            Send(ehlo_reply("SIZE 1000000", "ENHANCEDSTATUSCODES")),
            Expect(rb"MAIL FROM:<a@example\.org> SIZE=\d+"),
            Send(b"250 2.1.0 ok\r\n"),
            Expect(rb"RCPT TO:<b@example\.org>"),
            Send(b"250 2.1.5 ok\r\n"),
            Expect(rb"DATA"),
            Send(b"354 go\r\n"),
            ReadData(),
            Send(b"250 2.0.0 queued as X\r\n"),
            Expect(rb"QUIT"),
            Send(b"221 bye\r\n"),
        ]
    )
    result = driver.submit(RAW, server_for(fake), sender=SENDER, recipients=RCPT)
    fake.assert_ok()
    assert isinstance(result, SubmitResult)
    assert result.accepted == RCPT and result.refused == {}
    assert result.reply.code == 250 and result.reply.enhanced == "2.0.0"
    assert result.message_id == "t1@example.org"
    assert result.size == len(RAW)
    assert fake.data == [RAW + b".\r\n"]


def test_pipelining_sends_the_envelope_in_one_write(driver: Any, fake_smtp: Any) -> None:
    """MAIL, ten RCPTs and DATA reach the server in one read (one round trip)."""
    fake = fake_smtp(Responder(capabilities=("PIPELINING", "8BITMIME")))
    rcpts = [f"r{i}@example.org" for i in range(10)]
    result = driver.submit(RAW, server_for(fake), sender=SENDER, recipients=rcpts)
    fake.assert_ok()
    assert result.accepted == rcpts
    # reads: EHLO, the whole envelope, the data, QUIT.
    assert fake.reads[0] == 4
    commands = [c.split(b" ")[0] for c in fake.commands[0]]
    assert commands == [b"EHLO", b"MAIL"] + [b"RCPT"] * 10 + [b"DATA", b"QUIT"]


def test_partial_acceptance_lists_refused_recipients(driver: Any, fake_smtp: Any) -> None:
    fake = fake_smtp(Responder(replies={"RCPT TO:<bad@example.org>": "550 5.1.1 no such user"}))
    result = driver.submit(
        RAW, server_for(fake), sender=SENDER, recipients=["b@example.org", "bad@example.org"]
    )
    assert result.accepted == ["b@example.org"]
    assert result.refused["bad@example.org"].code == 550
    assert result.refused["bad@example.org"].enhanced == "5.1.1"
    assert len(fake.data) == 1


def test_all_recipients_refused_sends_no_data(driver: Any, fake_smtp: Any) -> None:
    fake = fake_smtp(
        Responder(capabilities=("SIZE 1000",), replies={"RCPT": "550 5.1.1 nobody here"})
    )
    with pytest.raises(RecipientsRefused) as info:
        driver.submit(RAW, server_for(fake), sender=SENDER, recipients=["x@example.org", "y@e.org"])
    err = info.value
    assert set(err.refused) == {"x@example.org", "y@e.org"}
    assert not err.is_temporary and err.stage == "rcpt"
    assert fake.data == []
    assert not any(c.startswith(b"DATA") for c in fake.commands[0])


def test_pipelined_354_with_no_recipients_gets_a_lone_dot(driver: Any, fake_smtp: Any) -> None:
    """X2: the server wrongly answers DATA with 354 although every RCPT failed."""
    fake = fake_smtp(
        Responder(
            replies={
                "RCPT": "550 5.1.1 nobody",
                "DATA": [Send(b"354 go ahead anyway\r\n"), ReadData(), Send(b"554 no rcpts\r\n")],
            }
        )
    )
    with pytest.raises(RecipientsRefused):
        driver.submit(RAW, server_for(fake), sender=SENDER, recipients=RCPT)
    assert fake.data == [b".\r\n"]  # the body never went out
    assert b"RSET" in fake.commands[0]


def test_sender_refused(driver: Any, fake_smtp: Any) -> None:
    fake = fake_smtp(Responder(capabilities=(), replies={"MAIL": "553 5.7.1 not you"}))
    with pytest.raises(SenderRefused) as info:
        driver.submit(RAW, server_for(fake), sender=SENDER, recipients=RCPT)
    assert info.value.reply is not None and info.value.reply.code == 553
    assert info.value.stage == "mail"
    assert not any(c.startswith(b"RCPT") for c in fake.commands[0])


def test_silent_greeting_times_out(driver: Any, fake_smtp: Any) -> None:
    """S1."""
    fake = fake_smtp([Silent(10)], check=False)
    started = time.monotonic()
    with pytest.raises(SmtpTimeout) as info:
        driver.submit(RAW, server_for(fake, timeout=1), sender=SENDER, recipients=RCPT)
    assert info.value.stage == "greeting"
    assert isinstance(info.value, TimeoutError)
    assert time.monotonic() - started < 3


def test_trickled_reply_cannot_hold_the_call(driver: Any, fake_smtp: Any) -> None:
    """S5: each byte arrives in time, but the whole reply is bounded by the timeout."""
    fake = fake_smtp([Trickle(b"220 " + b"x" * 60 + b"\r\n", interval=0.1)], check=False)
    started = time.monotonic()
    with pytest.raises(SmtpTimeout):
        driver.submit(RAW, server_for(fake, timeout=1), sender=SENDER, recipients=RCPT)
    assert time.monotonic() - started < 2.5


@pytest.mark.parametrize("code", [554, 421])
def test_refusing_greeting(driver: Any, fake_smtp: Any, code: int) -> None:
    """S2: ConnectError with the reply; QUIT attempted; no EHLO."""
    fake = fake_smtp([Send(f"{code} go away\r\n".encode()), Silent(1)], check=False)
    with pytest.raises(ConnectError) as info:
        driver.submit(RAW, server_for(fake), sender=SENDER, recipients=RCPT)
    assert info.value.reply is not None and info.value.reply.code == code
    assert info.value.stage == "greeting"
    assert info.value.is_temporary == (code == 421)
    fake.join(3)
    assert b"EHLO" not in fake.transcript[0]


def test_connection_refused(driver: Any, closed_port: int) -> None:
    """N1."""
    with pytest.raises(ConnectError) as info:
        driver.submit(RAW, Server("127.0.0.1", port=closed_port), sender=SENDER, recipients=RCPT)
    assert info.value.stage == "connect" and info.value.is_temporary


def test_connect_hangs(driver: Any, blackhole_port: int) -> None:
    """N2."""
    started = time.monotonic()
    with pytest.raises(SmtpTimeout) as info:
        driver.submit(
            RAW,
            Server("127.0.0.1", port=blackhole_port, timeout=1),
            sender=SENDER,
            recipients=RCPT,
        )
    assert info.value.stage == "connect"
    assert time.monotonic() - started < 3


def test_reset_after_mail(driver: Any, fake_smtp: Any) -> None:
    """N3: RST after MAIL → ServerDisconnected, retryable."""
    fake = fake_smtp(Responder(capabilities=(), replies={"MAIL": [Reset()]}), check=False)
    with pytest.raises(ServerDisconnected) as info:
        driver.submit(RAW, server_for(fake), sender=SENDER, recipients=RCPT)
    assert info.value.stage == "mail" and info.value.is_temporary


def test_close_during_data(driver: Any, fake_smtp: Any) -> None:
    """N4: the server never saw the dot: ServerDisconnected, not DeliveryStatusUnknown."""
    body = RAW + b"x" * 30_000_000  # larger than any socket buffer: the write must fail
    fake = fake_smtp(
        Responder(
            capabilities=(), replies={"DATA": [Send(b"354 go\r\n"), ReadBytes(1000), Reset()]}
        ),
        check=False,
    )
    with pytest.raises(ServerDisconnected) as info:
        driver.submit(body, server_for(fake), sender=SENDER, recipients=RCPT)
    assert not isinstance(info.value, DeliveryStatusUnknown)
    assert info.value.stage == "data"


def test_close_after_final_dot(driver: Any, fake_smtp: Any) -> None:
    """N5: the dot went out, the answer never came: delivery status unknown."""
    fake = fake_smtp(
        Responder(replies={"DATA": [Send(b"354 go\r\n"), ReadData(), Close()]}), check=False
    )
    with pytest.raises(DeliveryStatusUnknown) as info:
        driver.submit(RAW, server_for(fake), sender=SENDER, recipients=RCPT)
    assert info.value.stage == "data" and info.value.is_temporary
    assert len(fake.data) == 1


def test_no_answer_to_final_dot(driver: Any, fake_smtp: Any) -> None:
    """N6."""
    fake = fake_smtp(
        Responder(replies={"DATA": [Send(b"354 go\r\n"), ReadData(), Silent(5)]}), check=False
    )
    with pytest.raises(DeliveryStatusUnknown):
        driver.submit(RAW, server_for(fake, timeout=1), sender=SENDER, recipients=RCPT)


def test_421_mid_transaction_is_a_session_failure(driver: Any, fake_smtp: Any) -> None:
    """N7: 421 at RCPT ends the session; it is not a recipient refusal."""
    fake = fake_smtp(
        Responder(
            capabilities=(),
            replies={"RCPT": [Send(b"421 4.3.2 shutting down\r\n"), Close()]},
        ),
        check=False,
    )
    with pytest.raises(ServerDisconnected) as info:
        driver.submit(RAW, server_for(fake), sender=SENDER, recipients=RCPT)
    assert info.value.stage == "rcpt" and info.value.is_temporary
    assert info.value.reply is not None and info.value.reply.code == 421


def test_server_stops_reading_during_data(driver: Any, fake_smtp: Any) -> None:
    """N8: a blocked write cannot hang the client."""
    body = RAW + b"y" * 20_000_000
    fake = fake_smtp(
        [
            *steps_to_data(),
            StopReading(6),
        ],
        check=False,
    )
    started = time.monotonic()
    with pytest.raises(SmtpTimeout) as info:
        driver.submit(body, server_for(fake, timeout=1), sender=SENDER, recipients=RCPT)
    assert info.value.stage == "data"
    assert time.monotonic() - started < 5


def test_fewer_pipelined_replies_then_close(driver: Any, fake_smtp: Any) -> None:
    """S10: replies to MAIL only, then close: no body sent."""
    fake = fake_smtp(
        [
            Send(b"220 hi\r\n"),
            Expect(rb"EHLO .*"),
            Send(ehlo_reply("PIPELINING")),
            Expect(rb"MAIL .*"),
            Send(b"250 ok\r\n"),
            Delay(0.2),
            Close(),
        ],
        check=False,
    )
    with pytest.raises(ServerDisconnected) as info:
        driver.submit(RAW, server_for(fake), sender=SENDER, recipients=RCPT)
    assert info.value.stage == "rcpt"
    assert b"Hello." not in fake.transcript[0]


def test_malformed_reply_is_a_protocol_error(driver: Any, fake_smtp: Any) -> None:
    fake = fake_smtp(
        [Send(b"220 hi\r\n"), Expect(rb"EHLO .*"), Send(b"2x0 what\r\n"), Silent(2)], check=False
    )
    with pytest.raises(ProtocolError) as info:
        driver.submit(RAW, server_for(fake), sender=SENDER, recipients=RCPT)
    assert info.value.stage == "ehlo"


def test_ehlo_refused_falls_back_to_helo(driver: Any, fake_smtp: Any) -> None:
    fake = fake_smtp(Responder(replies={"EHLO": "500 5.5.1 what is EHLO"}))
    result = driver.submit(RAW, server_for(fake), sender=SENDER, recipients=RCPT)
    assert result.accepted == RCPT
    verbs = [c.split(b" ")[0] for c in fake.commands[0]]
    assert verbs[:3] == [b"EHLO", b"HELO", b"MAIL"]
    assert b"SIZE=" not in fake.commands[0][2]  # no extensions after HELO


def test_option_none_says_helo(driver: Any, fake_smtp: Any) -> None:
    fake = fake_smtp(Responder())
    driver.submit(RAW, server_for(fake, options=Option.NONE), sender=SENDER, recipients=RCPT)
    assert fake.commands[0][0].startswith(b"HELO ")


def test_size_limit_checked_before_mail(driver: Any, fake_smtp: Any) -> None:
    """S11."""
    fake = fake_smtp(Responder(capabilities=("SIZE 50",)))
    with pytest.raises(MessageTooLarge) as info:
        driver.submit(RAW, server_for(fake), sender=SENDER, recipients=RCPT)
    assert info.value.stage == "mail"
    assert not any(c.startswith(b"MAIL") for c in fake.commands[0])


def test_eight_bit_message_needs_8bitmime(driver: Any, fake_smtp: Any) -> None:
    fake = fake_smtp(Responder(capabilities=()))
    with pytest.raises(ExtensionUnavailable) as info:
        driver.submit(RAW + "é".encode(), server_for(fake), sender=SENDER, recipients=RCPT)
    assert info.value.extension == "8BITMIME"
    assert not any(c.startswith(b"MAIL") for c in fake.commands[0])


def test_eight_bit_message_declares_body(driver: Any, fake_smtp: Any) -> None:
    fake = fake_smtp(Responder(capabilities=("8BITMIME",)))
    driver.submit(RAW + "é\r\n".encode(), server_for(fake), sender=SENDER, recipients=RCPT)
    mail = next(c for c in fake.commands[0] if c.startswith(b"MAIL"))
    assert b"BODY=8BITMIME" in mail


def test_too_many_recipients_go_in_a_follow_up_transaction(driver: Any, fake_smtp: Any) -> None:
    """X3: 452 after some accepted recipients: the rest in a second transaction."""

    def rcpt(line: bytes, n: int) -> bytes:
        return b"452 4.5.3 too many recipients\r\n" if n in (2, 3) else b"250 ok\r\n"

    fake = fake_smtp(Responder(replies={"RCPT": rcpt}))
    rcpts = [f"r{i}@example.org" for i in range(4)]
    result = driver.submit(RAW, server_for(fake), sender=SENDER, recipients=rcpts)
    assert result.accepted == rcpts and result.refused == {}
    assert len(fake.data) == 2
    assert sum(1 for c in fake.commands[0] if c.startswith(b"MAIL")) == 2


def test_error_then_reuse_resets_first(driver: Any, fake_smtp: Any) -> None:
    """X5: a refused transaction, then a good one on the same connection."""

    def mail(line: bytes, n: int) -> bytes:
        return b"451 4.3.0 try later\r\n" if n == 0 else b"250 ok\r\n"

    fake = fake_smtp(Responder(capabilities=(), replies={"MAIL": mail}))
    results = driver.session(
        server_for(fake),
        [
            call("send", RAW, sender=SENDER, recipients=RCPT),
            call("send", RAW, sender=SENDER, recipients=RCPT),
        ],
    )
    assert isinstance(results[0], SenderRefused) and results[0].is_temporary
    assert isinstance(results[1], SubmitResult)
    assert len(fake.data) == 1


def test_many_messages_on_one_connection(driver: Any, fake_smtp: Any) -> None:
    fake = fake_smtp(Responder())
    results = driver.session(
        server_for(fake),
        [call("send", RAW, sender=SENDER, recipients=RCPT) for _ in range(5)]
        + [call("noop"), call("verify", "b@example.org"), call("reset")],
    )
    assert all(isinstance(r, SubmitResult) for r in results[:5])
    assert [r.code for r in results[5:]] == [250, 502, 250]
    assert fake.connections == 1 and len(fake.data) == 5
    assert b"RSET" in fake.commands[0]  # only the explicit reset
    assert fake.commands[0].count(b"RSET") == 1


def test_data_refused(driver: Any, fake_smtp: Any) -> None:
    fake = fake_smtp(Responder(data_reply=b"554 5.6.0 spam\r\n"))
    with pytest.raises(DataRefused) as info:
        driver.submit(RAW, server_for(fake), sender=SENDER, recipients=RCPT)
    assert info.value.stage == "data" and not info.value.is_temporary


def test_bdat_when_chunking_is_offered(driver: Any, fake_smtp: Any) -> None:
    fake = fake_smtp(Responder(capabilities=("PIPELINING", "CHUNKING", "8BITMIME")))
    body = RAW + b".dot line\nbare lf\r\n"
    result = driver.submit(body, server_for(fake), sender=SENDER, recipients=RCPT)
    assert result.reply.code == 250
    assert fake.data == [body.replace(b"\nbare", b"\r\nbare")]  # no dot-stuffing in BDAT
    assert any(c.startswith(b"BDAT ") and c.endswith(b" LAST") for c in fake.commands[0])


def test_disable_extensions(driver: Any, fake_smtp: Any) -> None:
    fake = fake_smtp(Responder(capabilities=("PIPELINING", "CHUNKING")))
    server = server_for(fake, disable_extensions={"chunking", "pipelining"})
    driver.submit(RAW, server, sender=SENDER, recipients=RCPT)
    assert any(c == b"DATA" for c in fake.commands[0])
    assert fake.reads[0] > 4  # no pipelining: one read per command


@pytest.mark.parametrize(
    "bad",
    ["a@b.c>\r\nRCPT TO:<x@evil>", "a@b.c\n", "x RET=FULL", "a@b@c", "no-at-sign", "a@b.c\x00"],
)
def test_hostile_envelope_addresses_fail_before_connecting(
    driver: Any, fake_smtp: Any, bad: str
) -> None:
    """U1/U2: nothing is written; here nothing is even connected."""
    fake = fake_smtp(Responder())
    with pytest.raises(MessageError):
        driver.submit(RAW, server_for(fake), sender=bad, recipients=RCPT)
    with pytest.raises(MessageError):
        driver.submit(RAW, server_for(fake), sender=SENDER, recipients=[bad])
    assert fake.connections == 0


def test_ready_message_from_a_file(driver: Any, fake_smtp: Any, tmp_path: Any) -> None:
    path = tmp_path / "m.eml"
    path.write_bytes(RAW)
    fake = fake_smtp(Responder())
    with path.open("rb") as handle:
        result = driver.submit(handle, server_for(fake), sender=SENDER, recipients=RCPT)
    assert result.size == len(RAW) and fake.data == [RAW + b".\r\n"]


def _capabilities(driver: Any, server: Server) -> Any:
    if driver.name == "sync":
        with Client(server) as client:
            return client.capabilities

    async def main() -> Any:
        async with AsyncClient(server) as client:
            return client.capabilities

    return asyncio.run(main())


def test_capabilities_are_typed_and_read_like_a_dict(driver: Any, fake_smtp: Any) -> None:
    """Issue 14: ``.capabilities`` is a ``Capabilities`` (size, auth_mechanisms, has())
    and still the contract's ``str -> str`` mapping with upper-case keys."""
    fake = fake_smtp(
        Responder(capabilities=("SIZE 1000", "auth plain", "AUTH=LOGIN", "8BITMIME", "X-ODD"))
    )
    caps = _capabilities(driver, server_for(fake))
    assert isinstance(caps, Capabilities) and isinstance(caps, Mapping)
    assert caps == {"SIZE": "1000", "AUTH": "plain LOGIN", "8BITMIME": "", "X-ODD": ""}
    assert caps.size == 1000
    assert caps.auth_mechanisms == ["PLAIN", "LOGIN"]
    assert caps.has("8bitmime") and not caps.has("CHUNKING")
    assert caps["size"] == "1000" and "size" in caps
    assert caps.get("CHUNKING") is None and caps.get("CHUNKING", "-") == "-"
    assert json.loads(json.dumps(dict(caps))) == dict(caps)
    with pytest.raises(TypeError):
        caps["SIZE"] = "1"  # type: ignore[index]


def test_capabilities_without_a_session_are_empty() -> None:
    caps = Client(Server("127.0.0.1")).capabilities
    assert caps == {} and caps.size is None and caps.auth_mechanisms == [] and not caps.has("X")
