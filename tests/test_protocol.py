"""The sans-IO core against scripted bytes in memory: no sockets involved."""

from __future__ import annotations

import ast
import pathlib
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smtpsubmit.errors import ProtocolError
from smtpsubmit.protocol import (
    Capabilities,
    Command,
    DataEncoder,
    LineEndingNormalizer,
    LocalProtocolError,
    ReplyParser,
    SmtpProtocol,
    State,
    xtext,
)
from smtpsubmit.reply import Reply

SRC = pathlib.Path(__file__).parents[1] / "src" / "smtpsubmit"


@pytest.mark.parametrize(
    "module",
    [
        "protocol.py",
        "session.py",
        "transaction.py",
        "batch.py",
        "streamed.py",
        "reply.py",
        "auth.py",
        "sasl.py",
        "scram.py",
    ],
)
def test_core_modules_import_no_io(module: str) -> None:
    """The protocol core stays sans-IO: no socket, ssl, asyncio, threading or time."""
    tree = ast.parse((SRC / module).read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"socket", "ssl", "asyncio", "threading", "time", "selectors"}


def parse_all(data: bytes) -> list[Reply]:
    parser = ReplyParser()
    parser.feed(data)
    replies = []
    while (reply := parser.next_reply()) is not None:
        replies.append(reply)
    return replies


def test_single_and_multiline_replies_with_enhanced_codes() -> None:
    replies = parse_all(
        b"220 mx ESMTP ready\r\n"
        b"250-mx.example\r\n250-PIPELINING\r\n250 SIZE 1000\r\n"
        b"550 5.1.1 <x@y>: no such user\r\n"
        b"250\r\n"
    )
    assert [r.code for r in replies] == [220, 250, 550, 250]
    assert replies[1].lines == ["mx.example", "PIPELINING", "SIZE 1000"]
    assert replies[2].enhanced == "5.1.1"
    assert replies[2].text == "<x@y>: no such user"
    assert replies[2].is_permanent and not replies[2].is_temporary
    assert replies[3].text == ""


def test_reply_split_across_feeds_byte_by_byte() -> None:
    parser = ReplyParser()
    data = b"250-first\r\n250 2.0.0 second\r\n"
    out = []
    for i in range(len(data)):
        parser.feed(data[i : i + 1])
        if (reply := parser.next_reply()) is not None:
            out.append(reply)
    assert out == [Reply(250, "first\nsecond", "2.0.0")]


def test_enhanced_code_disagreeing_with_basic_code_is_classified_by_basic_code() -> None:
    """X6: ``550 4.2.2`` is permanent because the basic code says so."""
    (reply,) = parse_all(b"550 4.2.2 mailbox full\r\n")
    assert reply.is_permanent and reply.enhanced == "4.2.2"


@pytest.mark.parametrize(
    "bad",
    [
        b"25\r\n",
        b"2x0 hello\r\n",
        b"250-a\r\n251 b\r\n",
        b"250 nul\x00here\r\n",
        b"250 \xff\xfe not utf8\r\n",
        b"hello\r\n",
        b"650 what\r\n",
        b"250 bare\rCR\r\n",
    ],
)
def test_malformed_replies_are_protocol_errors(bad: bytes) -> None:
    """S6: malformed codes, mixed codes, NUL, non-UTF-8."""
    with pytest.raises(ProtocolError):
        parse_all(bad)


def test_endless_continuation_is_bounded() -> None:
    """S3: a reply over 100 lines is refused before it can grow without limit."""
    parser = ReplyParser()
    with pytest.raises(ProtocolError, match="too large"):
        for _ in range(1000):
            parser.feed(b"250-x\r\n")
            parser.next_reply()


def test_reply_size_cap_in_octets() -> None:
    parser = ReplyParser()
    with pytest.raises(ProtocolError, match="too large"):
        for _ in range(100):
            parser.feed(b"250-" + b"y" * 4000 + b"\r\n")
            parser.next_reply()


def test_overlong_line_without_crlf_is_refused_at_the_cap() -> None:
    """S4: a line with no CRLF cannot make the buffer grow past 4 KiB."""
    parser = ReplyParser()
    parser.feed(b"2" * 4000)
    assert parser.next_reply() is None
    parser.feed(b"2" * 200)
    with pytest.raises(ProtocolError, match="longer than"):
        parser.next_reply()


def test_reply_lines_with_bare_lf_are_tolerated() -> None:
    assert parse_all(b"250-a\n250 b\n") == [Reply(250, "a\nb")]


@pytest.mark.parametrize("char", ["\r", "\n", "\x00", "\t", "\x7f", "\x1b"])
def test_control_characters_in_arguments_are_refused_before_rendering(char: str) -> None:
    """U1/U2: no command can be smuggled through an argument."""
    with pytest.raises(ValueError, match="control character"):
        Command("MAIL", f"FROM:<a@b.c>{char}RCPT TO:<x@evil>").render()


def test_state_machine_enforces_order() -> None:
    core = SmtpProtocol()
    with pytest.raises(LocalProtocolError):
        core.send(Command("EHLO", "me"))  # before the greeting
    core.receive_data(b"220 hi\r\n")
    assert core.next_reply() == Reply(220, "hi")
    assert core.state is State.CONNECTED
    with pytest.raises(LocalProtocolError):
        core.send(Command("MAIL", "FROM:<a@b.c>"))  # before EHLO
    core.send(Command("EHLO", "me"))
    core.receive_data(b"250 ok\r\n")
    core.next_reply()
    assert core.state is State.READY
    with pytest.raises(LocalProtocolError):
        core.send(Command("RCPT", "TO:<a@b.c>"))  # before MAIL
    core.send(Command("MAIL", "FROM:<a@b.c>"))
    core.send(Command("RCPT", "TO:<x@y.z>"))
    core.send(Command("DATA"))
    core.receive_data(b"250 ok\r\n250 ok\r\n354 go\r\n")
    assert [core.next_reply().code for _ in range(3)] == [250, 250, 354]  # type: ignore[union-attr]
    assert core.state is State.DATA
    with pytest.raises(LocalProtocolError):
        core.send(Command("NOOP"))  # only message data now
    core.send_data_end()
    core.receive_data(b"250 queued\r\n")
    core.next_reply()
    assert core.state is State.READY


def _ready_core() -> SmtpProtocol:
    core = SmtpProtocol()
    core.receive_data(b"220 hi\r\n")
    core.next_reply()
    core.send(Command("EHLO", "me"))
    core.receive_data(b"250 ok\r\n")
    core.next_reply()
    return core


def test_local_protocol_error_reads_as_misuse() -> None:
    """Misuse of the core is a RuntimeError (our bug), never an SmtpError (theirs)."""
    assert issubclass(LocalProtocolError, RuntimeError)
    assert not issubclass(LocalProtocolError, ProtocolError)


@pytest.mark.parametrize("verb", ["RSET", "QUIT", "MAIL"])
def test_no_command_while_data_is_in_progress(verb: str) -> None:
    """Between DATA and the end of the data, a command would become message text:
    RSET and QUIT are refused locally, before anything is rendered."""
    core = _ready_core()
    core.send(Command("MAIL", "FROM:<a@b.c>"))
    core.send(Command("RCPT", "TO:<x@y.z>"))
    core.send(Command("DATA"))
    with pytest.raises(LocalProtocolError, match="in progress"):
        core.send(Command(verb, "FROM:<a@b.c>" if verb == "MAIL" else ""))  # DATA sent, no 354
    core.receive_data(b"250 ok\r\n250 ok\r\n354 go\r\n")
    for _ in range(3):
        core.next_reply()
    assert core.data_in_progress
    with pytest.raises(LocalProtocolError, match="in progress"):
        core.send(Command(verb, "FROM:<a@b.c>" if verb == "MAIL" else ""))
    core.send_data_end()
    assert not core.data_in_progress
    core.send(Command(verb, "FROM:<a@b.c>" if verb == "MAIL" else ""))  # pipelined after the dot
    core.receive_data(b"250 queued\r\n")
    assert core.next_reply() == Reply(250, "queued")


@pytest.mark.parametrize("verb", ["RSET", "QUIT"])
def test_no_rset_or_quit_between_bdat_chunks(verb: str) -> None:
    """From the first BDAT to BDAT LAST only BDAT may follow; a refused chunk ends
    the transaction, so RSET is allowed again."""
    core = _ready_core()
    core.send(Command("MAIL", "FROM:<a@b.c>"))
    core.send(Command("RCPT", "TO:<x@y.z>"))
    core.send(Command("BDAT", "10"))
    assert core.data_in_progress
    with pytest.raises(LocalProtocolError, match="in progress"):
        core.send(Command(verb))
    core.receive_data(b"250 ok\r\n250 ok\r\n250 10 octets\r\n")
    for _ in range(3):
        core.next_reply()
    assert core.state is State.CHUNKING
    with pytest.raises(LocalProtocolError, match="in progress"):
        core.send(Command(verb))
    core.send(Command("BDAT", "3"))
    core.receive_data(b"552 5.3.4 too big\r\n")
    core.next_reply()
    assert core.state is State.READY and not core.data_in_progress
    core.send(Command(verb))


def test_bdat_last_ends_the_data_at_once() -> None:
    """BDAT LAST ends the data when it is sent, so the next MAIL may be pipelined."""
    core = _ready_core()
    core.send(Command("MAIL", "FROM:<a@b.c>"))
    core.send(Command("RCPT", "TO:<x@y.z>"))
    core.send(Command("BDAT", "5 LAST"))
    assert not core.data_in_progress
    core.send(Command("MAIL", "FROM:<a@b.c>"))
    core.receive_data(b"250 ok\r\n250 ok\r\n250 queued\r\n250 ok\r\n")
    assert [core.next_reply().code for _ in range(4)] == [250] * 4  # type: ignore[union-attr]
    assert core.state is State.MAIL


def test_hidden_secrets_are_masked_in_replies_and_transcript(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every registered form is masked in the reply returned and in the transcript;
    a 334 challenge is returned intact (the mechanism needs it) and logged as ***."""
    caplog.set_level("DEBUG", logger="smtpsubmit.transcript")
    core = _ready_core()
    core.hide("s3cret", "AHVzZXIAczNjcmV0")
    core.send(Command("AUTH", "PLAIN AHVzZXIAczNjcmV0", secret=True))
    core.receive_data(b"535-5.7.8 bad AHVzZXIAczNjcmV0\r\n535 5.7.8 (s3cret)\r\n")
    reply = core.next_reply()
    assert reply == Reply(535, "bad ***\n(***)", "5.7.8")
    core.send(Command("AUTH", "LOGIN"))
    core.receive_data(b"334 czNjcmV0\r\n")
    assert core.next_reply() == Reply(334, "czNjcmV0")
    core.unhide()
    core.send(Command("NOOP"))
    core.receive_data(b"250 s3cret is no longer hidden\r\n")
    assert core.next_reply() == Reply(250, "s3cret is no longer hidden")
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "AHVzZXIAczNjcmV0" not in logged and "(***)" in logged


@pytest.mark.parametrize(
    ("argument", "secret", "shown"),
    [
        ("PLAIN AHVzZXIAczNjcmV0", True, "AUTH PLAIN ***"),
        ("CRAM-MD5", False, "AUTH CRAM-MD5"),
        ("LOGIN", False, "AUTH LOGIN"),
    ],
)
def test_auth_line_shows_stars_only_for_a_response(argument: str, secret: bool, shown: str) -> None:
    assert Command("AUTH", argument, "auth", secret=secret).loggable() == shown


def test_refused_mail_in_a_pipeline_returns_to_ready() -> None:
    core = SmtpProtocol()
    core.receive_data(b"220 hi\r\n")
    core.next_reply()
    core.send(Command("EHLO", "me"))
    core.send(Command("MAIL", "FROM:<a@b.c>"))
    core.send(Command("RCPT", "TO:<x@y.z>"))
    core.receive_data(b"250 ok\r\n550 no\r\n503 need MAIL\r\n")
    for _ in range(3):
        core.next_reply()
    assert core.state is State.READY
    core.send(Command("MAIL", "FROM:<a@b.c>"))  # allowed again


def test_unsolicited_reply_is_a_protocol_error() -> None:
    """S7: a reply with no command waiting can never be matched to the next command."""
    core = SmtpProtocol()
    core.receive_data(b"220 hi\r\n250 surprise\r\n")
    core.next_reply()
    with pytest.raises(ProtocolError, match="unexpected"):
        core.next_reply()


def test_421_closes_the_session() -> None:
    core = SmtpProtocol()
    core.receive_data(b"220 hi\r\n")
    core.next_reply()
    core.send(Command("EHLO", "me"))
    core.receive_data(b"421 4.3.2 shutting down\r\n")
    core.next_reply()
    assert core.state is State.CLOSED


def test_capabilities_parsing_and_disabling() -> None:
    reply = Reply(
        250,
        "mx.example\nPIPELINING\nSIZE 10240000\nAUTH PLAIN LOGIN\nAUTH=CRAM-MD5\n"
        "8bitmime\nCHUNKING",
    )
    caps = Capabilities.parse(reply, disabled={"chunking"})
    assert "PIPELINING" in caps and "8BITMIME" in caps and "CHUNKING" not in caps
    assert caps.size_limit == 10240000
    assert caps.auth_mechanisms == ["PLAIN", "LOGIN", "CRAM-MD5"]


@pytest.mark.parametrize("value", ["99999999999999999999", "-5", "abc", "0", ""])
def test_absurd_size_values_mean_no_limit(value: str) -> None:
    """S12: SIZE 99999999999999999999 parses safely."""
    caps = Capabilities.parse(Reply(250, f"mx\nSIZE {value}"))
    assert caps.size_limit is None


def test_xtext_encoding() -> None:
    assert xtext("a+b=c d@é") == "a+2Bb+3Dc+20d@+C3+A9"


def test_transcript_masks_auth(caplog: pytest.LogCaptureFixture) -> None:
    core = SmtpProtocol()
    core.receive_data(b"220 hi\r\n")
    core.next_reply()
    core.send(Command("EHLO", "me"))
    core.receive_data(b"250 ok\r\n")
    core.next_reply()
    with caplog.at_level("DEBUG", logger="smtpsubmit.transcript"):
        core.send(Command("AUTH", "PLAIN AGFsaWNlAFMzY3IzdC1DQU5BUlk=", "auth", secret=True))
        core.receive_data(b"334 c2VjcmV0Y2hhbGxlbmdl\r\n")
        core.next_reply()
        core.send_auth_response("UzNjcjN0LUNBTkFSWQ==")
    text = caplog.text
    assert "C: AUTH PLAIN ***" in text and "S: 334 ***" in text and "C: ***" in text
    assert "AGFsaWNl" not in text and "UzNjcjN0" not in text and "c2VjcmV0" not in text


# -- message data ----------------------------------------------------------------------


def wire(chunks: list[bytes]) -> bytes:
    """The complete DATA payload for ``chunks``."""
    encoder = DataEncoder()
    return b"".join([*(encoder.feed(chunk) for chunk in chunks), encoder.end()])


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"hello", b"hello\r\n.\r\n"),
        (b"", b".\r\n"),
        (b".leading\r\n", b"..leading\r\n.\r\n"),
        (b"a\n.\nb", b"a\r\n..\r\nb\r\n.\r\n"),
        (b"a\r.\rb", b"a\r\n..\r\nb\r\n.\r\n"),
        (b"a\n.\r\nb\r\n", b"a\r\n..\r\nb\r\n.\r\n"),
        (b"..x\r\n", b"...x\r\n.\r\n"),
        (b"lone\rcr", b"lone\r\ncr\r\n.\r\n"),
        (b"end\r\n", b"end\r\n.\r\n"),
    ],
)
def test_smuggling_sequences_are_neutralised(body: bytes, expected: bytes) -> None:
    """U5: only CRLF on the wire, every line-leading dot doubled, one terminator."""
    assert wire([body]) == expected


def test_crlf_split_across_chunks_stays_one_line_break() -> None:
    assert wire([b"a\r", b"\nb\r", b"\r\n", b".c"]) == b"a\r\nb\r\n\r\n..c\r\n.\r\n"


def unstuff(data: bytes) -> bytes:
    assert data.endswith(b"\r\n.\r\n") or data == b".\r\n"
    body = data[:-3]
    lines = body.split(b"\r\n")
    return b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines)


@given(st.lists(st.binary(max_size=50), max_size=8))
def test_data_encoding_property(chunks: list[bytes]) -> None:
    """For any input split anyhow: CRLF only, exactly one terminator, unstuffs to the
    line-normalised input."""
    out = wire(chunks)
    joined = b"".join(chunks)
    assert re.search(rb"\r(?!\n)|(?<!\r)\n", out) is None
    assert out.count(b"\r\n.\r\n") == (1 if joined else 0) or out == b".\r\n"
    assert out.endswith(b".\r\n")
    normalised = re.sub(rb"\r\n|\r|\n", b"\r\n", joined)
    if normalised and not normalised.endswith(b"\r\n"):
        normalised += b"\r\n"
    assert unstuff(out) == normalised


@given(st.lists(st.binary(max_size=40), max_size=8))
def test_line_normaliser_is_independent_of_chunking(chunks: list[bytes]) -> None:
    whole = LineEndingNormalizer()
    expected = whole.feed(b"".join(chunks)) + whole.flush()
    pieces = LineEndingNormalizer()
    got = b"".join(pieces.feed(c) for c in chunks) + pieces.flush()
    assert got == expected


def test_octet_count_excludes_stuffing() -> None:
    encoder = DataEncoder()
    encoder.feed(b".a\r\n")
    encoder.end()
    assert encoder.octets == 4


@given(st.binary(max_size=300))
def test_reply_parser_never_crashes_unexpectedly(data: bytes) -> None:
    """Fuzz: arbitrary bytes give replies or ProtocolError, nothing else."""
    parser = ReplyParser()
    parser.feed(data)
    try:
        while parser.next_reply() is not None:
            pass
    except ProtocolError:
        pass
