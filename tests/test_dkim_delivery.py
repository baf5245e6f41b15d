"""Signed messages through real servers: aiosmtpd (DATA) and Postfix (BDAT and DATA) with
OpenDKIM as a milter, whose ``Authentication-Results: … dkim=pass`` is the verdict of an
independent verifier on the bytes Postfix stored."""

from __future__ import annotations

import logging
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from smtpsubmit import Attachment, Encoding, Message, Option, Server
from tests.dkim_keys import ed_signer, rsa_signer, verify_each
from tests.drivers import call

OPENDKIM = "/usr/sbin/opendkim"


def _kinds() -> dict[str, Message]:
    return {
        "text": Message(
            sender="Ann <ann@example.org>",
            to="x@capture.test",
            bcc="hidden@capture.test",
            subject="Signed   text",
            text="Hello  \nworld\t\n\n\n.leading dot\n",
        ),
        "multipart": Message(
            sender="ann@example.org",
            to="x@capture.test",
            subject="Report",
            text="See attached.",
            html="<p>See <b>attached</b>.</p>",
            attachments=[Attachment(data=bytes(range(256)) * 2000, filename="data.bin")],
        ),
        "8bit": Message(
            sender="ann@example.org",
            to="x@capture.test",
            subject="Caf\u00e9",
            text="Gr\u00fc\u00dfe aus K\u00f6ln \u2014 " * 40,
            encoding=Encoding.EIGHT_BIT,
        ),
        "smtputf8": Message(
            sender="J\u00f6rg <j\u00f6rg@example.org>",
            to="x@capture.test",
            cc="\u00e9l\u00e8ve@example.org",
            subject="\u00dcbung",
            text="\u00c7a va?",
        ),
    }


def _field_count(message: bytes, name: bytes) -> int:
    head = message.split(b"\r\n\r\n", 1)[0]
    return len(re.findall(rb"^" + name + rb":", head, re.IGNORECASE | re.MULTILINE))


# -- aiosmtpd: DATA ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["text", "multipart", "8bit", "smtputf8"])
def test_signed_message_verifies_as_aiosmtpd_received_it(
    driver: Any, aiosmtpd_server: Any, kind: str
) -> None:
    signers = [rsa_signer(), ed_signer(canonicalization=("simple", "simple"))]
    server = Server(
        aiosmtpd_server.host, port=aiosmtpd_server.port, options=Option.EXTENDED, dkim=signers
    )
    result = driver.submit(_kinds()[kind], server)
    received = aiosmtpd_server.wait_for(1)[0].original_content
    assert verify_each(received, signers) == [True, True]
    assert _field_count(received, b"bcc") == 0  # signed after the Bcc field was removed
    assert f"SIZE={len(received)}" in aiosmtpd_server.messages[0].mail_options
    assert result.size == len(received)


def test_ready_message_signed_as_stored_and_per_send(driver: Any, aiosmtpd_server: Any) -> None:
    """Bare LF line ends and a missing final newline: the server stores CRLF lines, and
    the signature covers exactly that. ``send(dkim=)`` replaces the server's signer."""
    raw = b"From: ann@example.org\nTo: bob@example.org\nSubject: raw\n\nline  one\nlast"
    rsa, ed = rsa_signer(), ed_signer()
    server = Server(
        aiosmtpd_server.host, port=aiosmtpd_server.port, options=Option.EXTENDED, dkim=rsa
    )
    envelope = {"sender": "ann@example.org", "recipients": ["bob@example.org"]}
    out = driver.session(
        server,
        [call("send", raw, **envelope), call("send", raw, dkim=ed, **envelope)],
    )
    assert not [r for r in out if isinstance(r, Exception)]
    first, second = (m.original_content for m in aiosmtpd_server.wait_for(2))
    assert first.endswith(b"line  one\r\nlast\r\n")
    assert verify_each(first, [rsa]) == [True]
    assert b"a=rsa-sha256" in first
    assert verify_each(second, [ed]) == [True]
    assert b"a=rsa-sha256" not in second
    assert _field_count(second, b"dkim-signature") == 1


# -- Postfix with OpenDKIM as a milter: BDAT and DATA --------------------------------------


class OpenDkim:
    """An OpenDKIM verifier on the Postfix fixture's ``dkim_milter`` port."""

    def __init__(self, postfix: Any, signers: list[Any]) -> None:
        self.dir = Path(postfix.root) / "opendkim"
        self.dir.mkdir(exist_ok=True)
        self.socket = Path(postfix.root) / "queue" / "opendkim.sock"
        keys = self.dir / "keys"
        keys.write_text("".join(f"{s.dns_name} {s.dns_record()}\n" for s in signers))
        conf = self.dir / "opendkim.conf"
        conf.write_text(
            f"Mode v\nSocket local:{self.socket}\nUMask 000\nBackground no\nSyslog no\n"
            f"PidFile {self.dir}/pid\nAuthservID {postfix.hostname}\n"
            f"TestPublicKeys {keys}\nAlwaysAddARHeader yes\n"
        )
        self.log = self.dir / "stderr"
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [OPENDKIM, "-x", str(conf), "-f"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 10
        while not self._listening():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"opendkim did not start: {self.log.read_text()}")
            time.sleep(0.02)

    def _listening(self) -> bool:
        """The socket file appears at bind(), before listen(): wait until it accepts."""
        with socket.socket(socket.AF_UNIX) as probe:
            try:
                probe.connect(str(self.socket))
            except OSError:
                return False
            return True

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.socket.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def opendkim(postfix: Any) -> Iterator[tuple[OpenDkim, list[Any]]]:
    if not Path(OPENDKIM).exists():
        pytest.fail("opendkim is not installed: run scripts/install-system-deps.sh")
    signers = [rsa_signer(), ed_signer()]
    milter = OpenDkim(postfix, signers)
    try:
        yield milter, signers
    finally:
        milter.stop()


def _authentication_results(message: bytes) -> str:
    head = message.split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
    match = re.search(r"^Authentication-Results:(.*?)\r\n(?![ \t])", head, re.M | re.S)
    assert match, f"no Authentication-Results in:\n{head}"
    return re.sub(r"\s+", " ", match[1])


@pytest.mark.postfix
@pytest.mark.parametrize("transfer", ["BDAT", "DATA"])
@pytest.mark.parametrize("kind", ["text", "multipart", "8bit", "smtputf8"])
def test_opendkim_milter_passes_both_signatures(
    driver: Any,
    postfix: Any,
    opendkim: tuple[OpenDkim, list[Any]],
    caplog: pytest.LogCaptureFixture,
    kind: str,
    transfer: str,
) -> None:
    _, signers = opendkim
    postfix.clear()
    caplog.set_level(logging.DEBUG, logger="smtpsubmit.transcript")
    server = Server(
        postfix.host,
        port=postfix.dkim_milter,
        options=Option.EXTENDED,
        disable_extensions=frozenset() if transfer == "BDAT" else {"CHUNKING"},
        dkim=signers,
    )
    driver.submit(_kinds()[kind], server, recipients=["x@capture.test"])
    stored = postfix.wait_for_capture("x@capture.test")
    results = _authentication_results(stored)
    assert results.startswith(f" {postfix.hostname};")
    assert "header.a=rsa-sha256" in results
    assert "header.a=ed25519-sha256" in results
    assert results.count("dkim=pass") == 2, results
    assert "dkim=fail" not in results
    commands = [r.getMessage() for r in caplog.records if r.getMessage().startswith("C: ")]
    assert any(c.startswith(f"C: {transfer}") for c in commands), commands
    # dkimpy agrees on the same stored bytes (OpenDKIM's own field is not signed).
    assert verify_each(stored, signers) == [True, True]


def test_memory_and_file_transports_record_the_signed_bytes(tmp_path: Path) -> None:
    """What a test double records with ``dkim=`` is what a server would have received."""
    from smtpsubmit.transports import FileTransport, MemoryTransport

    signer = ed_signer()
    memory = MemoryTransport()
    result = memory.send(_kinds()["text"], dkim=signer)
    (kept,) = memory.outbox
    assert kept.raw.startswith(b"DKIM-Signature: ")
    assert verify_each(kept.raw, [signer]) == [True]
    assert result.size == len(kept.raw)
    FileTransport(tmp_path).send(_kinds()["multipart"], dkim=[signer, rsa_signer()])
    (eml,) = tmp_path.glob("*.eml")
    assert verify_each(eml.read_bytes(), [signer, rsa_signer()]) == [True, True]


@pytest.mark.postfix
def test_send_many_stream_signs_every_message_with_the_servers_signer(
    driver: Any, postfix: Any, opendkim: tuple[OpenDkim, list[Any]]
) -> None:
    """A BDAT stream (send_many) signs each message as a single send does."""
    _, signers = opendkim
    postfix.clear()
    server = Server(postfix.host, port=postfix.dkim_milter, options=Option.EXTENDED, dkim=signers)
    messages = [_kinds()[kind] for kind in ("text", "multipart", "8bit")]
    (results,) = driver.session(server, [call("send_many", messages)])
    assert [type(r).__name__ for r in results] == ["SubmitResult"] * 3
    deadline = time.monotonic() + 15
    while len(postfix.capture_files("x@capture.test")) < 3:
        assert time.monotonic() < deadline, postfix.maillog()
        time.sleep(0.02)
    time.sleep(0.2)  # a capture file is complete once the next one exists; let the last finish
    for path in postfix.capture_files("x@capture.test"):
        message = path.read_bytes()
        assert _authentication_results(message).count("dkim=pass") == 2
        assert verify_each(message, signers) == [True, True]
