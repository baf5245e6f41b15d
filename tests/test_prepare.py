"""prepare_submission: any message input to an envelope and bytes, without a network."""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import pytest

from smtpsubmit import Message
from smtpsubmit.errors import MessageError
from smtpsubmit.prepare import check_before_connecting, prepare_submission

RAW = (
    b"From: a@example.org\r\nTo: b@example.org\r\nBcc: hidden@example.org\r\n"
    b"Message-ID: <raw-1@example.org>\r\n\r\nbody\n"
)


@dataclass
class FakeSession:
    """What prepare_submission needs of a session: the offered extensions."""

    capabilities: set[str] = field(default_factory=set)


def drain(source: object) -> bytes:
    assert callable(source)
    return b"".join(source())


@pytest.mark.parametrize("make", [lambda: RAW, lambda: io.BytesIO(RAW)])
def test_ready_bytes_or_file_lose_bcc_and_the_size_is_exact(make: object) -> None:
    assert callable(make)
    envelope, source = prepare_submission(
        make(), FakeSession(), sender="s@example.org", recipients=["r@example.org"]
    )
    data = drain(source)
    assert b"Bcc" not in data and b"hidden" not in data
    assert data.endswith(b"\r\n\r\nbody\r\n")
    assert envelope.size == len(data)
    assert drain(source) == data  # re-readable for a follow-up transaction
    assert envelope.message_id == "raw-1@example.org"
    assert (envelope.sender, envelope.recipients) == ("s@example.org", ["r@example.org"])


def test_nothing_is_refused_here_the_session_decides() -> None:
    """SMTPUTF8 and 8-bit needs are reported in the envelope, not raised."""
    message = Message(sender="a@example.org", to="jörg@example.org", text="hi")
    envelope, _ = prepare_submission(message, FakeSession())
    assert envelope.smtputf8
    raw = "From: a@example.org\r\n\r\nGrüße\r\n".encode()
    envelope, _ = prepare_submission(
        raw, FakeSession(), sender="a@example.org", recipients=["b@example.org"]
    )
    assert envelope.eight_bit and not envelope.smtputf8
    envelope, _ = prepare_submission(
        b"x\r\n", FakeSession(), sender="a@example.org", recipients=["ü@example.org"]
    )
    assert envelope.smtputf8


def test_composed_message_renders_for_the_offered_extensions() -> None:
    message = Message(sender="a@example.org", to="b@example.org", text="Grüße", encoding="8bit")
    plain, source = prepare_submission(message, FakeSession())
    assert not plain.eight_bit and drain(source).isascii()
    eight, source = prepare_submission(message, FakeSession({"8BITMIME"}))
    assert eight.eight_bit and "Grüße".encode() in drain(source)
    assert eight.size == len(drain(source))


def test_explicit_envelope_overrides_a_message() -> None:
    message = Message(sender="a@example.org", to="b@example.org", bcc="c@example.org", text="x")
    envelope, _ = prepare_submission(
        message, FakeSession(), sender="bounce@example.org", recipients="only@example.org"
    )
    assert envelope.sender == "bounce@example.org"
    assert envelope.recipients == ["only@example.org"]


def test_bad_input_fails_before_connecting() -> None:
    with pytest.raises(MessageError, match="sender= and recipients="):
        check_before_connecting(RAW, None, None)
    with pytest.raises(MessageError, match="binary file"):
        check_before_connecting("text", "a@example.org", ["b@example.org"])  # type: ignore[arg-type]
    with pytest.raises(MessageError):
        check_before_connecting(RAW, "a@example.org", ["not an address"])
    with pytest.raises(MessageError, match="at least one recipient"):
        check_before_connecting(RAW, "a@example.org", [])
