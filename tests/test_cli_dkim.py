"""``smtpsubmit dkim keygen`` and ``smtpsubmit send --dkim-*`` end to end (subprocess)."""

from __future__ import annotations

import re
import stat
from pathlib import Path
from typing import Any

import pytest

from smtpsubmit import DkimSigner
from tests.dkim_keys import rsa_pem, verify_each
from tests.test_cli_send import home, run_cli

__all__ = ["home"]

SEND = ["--from", "Ann <ann@example.org>", "--to", "bob@example.org", "--subject", "Hi"]


def _record(stdout: str) -> tuple[str, str]:
    """(owner name, TXT text) from the zone-file line keygen prints."""
    match = re.fullmatch(r'(\S+)\. IN TXT ((?:"[^"]*" ?)+)\n', stdout)
    assert match, stdout
    strings = re.findall(r'"([^"]*)"', match[2])
    assert all(len(s) <= 255 for s in strings)
    return match[1], "".join(strings)


@pytest.mark.parametrize(("algorithm", "tag"), [("rsa", "k=rsa"), ("ed25519", "k=ed25519")])
def test_keygen_writes_a_private_key_and_prints_its_record(
    home: Path, tmp_path: Path, algorithm: str, tag: str
) -> None:
    out = tmp_path / "key.pem"
    done = run_cli(
        ["dkim", "keygen", "--selector", "s1", "--domain", "example.org",
         "--algorithm", algorithm, "--out", str(out)],
        home,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert "PRIVATE KEY" not in done.stdout
    name, text = _record(done.stdout)
    assert name == "s1._domainkey.example.org"
    assert text.startswith(f"v=DKIM1; {tag}; p=")
    signer = DkimSigner("example.org", "s1", out)
    assert signer.dns_record() == text  # the record publishes this very key


def test_keygen_rsa_record_is_split_into_dns_strings(home: Path, tmp_path: Path) -> None:
    out = tmp_path / "big.pem"
    done = run_cli(
        ["dkim", "keygen", "--selector", "s", "--domain", "example.org", "--bits", "4096",
         "--out", str(out)],
        home,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.count('" "') >= 2  # a 4096-bit key needs three strings
    _record(done.stdout)


def test_keygen_refuses_to_overwrite_and_bad_input(home: Path, tmp_path: Path) -> None:
    out = tmp_path / "key.pem"
    out.write_text("keep me")
    base = ["dkim", "keygen", "--domain", "example.org"]
    done = run_cli([*base, "--selector", "s", "--out", str(out)], home)
    assert done.returncode == 64
    assert "exists" in done.stderr
    assert out.read_text() == "keep me"
    done = run_cli([*base, "--selector", "bad_sel!", "--out", str(tmp_path / "n.pem")], home)
    assert done.returncode == 64
    assert "selector" in done.stderr
    assert not (tmp_path / "n.pem").exists()
    done = run_cli([*base, "--selector", "s", "--bits", "512", "--out", str(tmp_path / "n")], home)
    assert done.returncode == 64


def test_send_signs_with_flags(aiosmtpd_server: Any, home: Path, tmp_path: Path) -> None:
    key = tmp_path / "k.pem"
    key.write_bytes(rsa_pem())
    done = run_cli(
        ["send", "--host", "127.0.0.1", "--port", str(aiosmtpd_server.port), *SEND,
         "--text", "Hello", "--dkim-key", str(key), "--dkim-selector", "s1"],
        home,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    received = aiosmtpd_server.wait_for(1)[0].original_content
    signer = DkimSigner("example.org", "s1", key)  # d= defaults to the From domain
    assert b"d=example.org; s=s1;" in received
    assert verify_each(received, [signer]) == [True]


def test_send_signs_with_account_keys(aiosmtpd_server: Any, home: Path, tmp_path: Path) -> None:
    key = home / "dkim.pem"
    key.write_bytes(rsa_pem())
    config = home / ".config" / "smtpsubmit" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text(
        f'[accounts.a]\nhost = "127.0.0.1"\nport = {aiosmtpd_server.port}\n'
        'dkim_key = "~/dkim.pem"\ndkim_selector = "acct"\ndkim_domain = "mail.example.org"\n'
    )
    done = run_cli(["send", "--account", "a", *SEND, "--text", "Hello"], home)
    assert done.returncode == 0, done.stderr
    received = aiosmtpd_server.wait_for(1)[0].original_content
    signer = DkimSigner("mail.example.org", "acct", key)
    assert verify_each(received, [signer]) == [True]


def test_send_dkim_errors_before_connecting(home: Path, tmp_path: Path) -> None:
    key = tmp_path / "k.pem"
    key.write_bytes(rsa_pem())
    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
    # Port 9 of loopback has no listener: reaching the network would be exit 75.
    base = ["send", "--host", "127.0.0.1", "--port", "9", *SEND, "--text", "x"]
    cases = [
        (["--dkim-key", str(key), "--dkim-selector", "no_good!"], 64, "selector"),
        (["--dkim-key", str(bad), "--dkim-selector", "s"], 64, "not a valid PEM"),
        (["--dkim-key", str(tmp_path / "missing.pem"), "--dkim-selector", "s"], 66, "no such"),
        (["--dkim-key", str(key)], 64, "needs both a key and a selector"),
    ]
    for extra, code, text in cases:
        done = run_cli([*base, *extra], home)
        assert done.returncode == code, (extra, done.stderr)
        assert text in done.stderr
        assert "PRIVATE" not in done.stderr


def test_sendmail_signs_with_account_keys(aiosmtpd_server: Any, home: Path) -> None:
    """sendmail -t (what PHP and cron use) signs too, after removing Bcc."""
    key = home / "dkim.pem"
    key.write_bytes(rsa_pem())
    config = home / ".config" / "smtpsubmit" / "config.toml"
    config.parent.mkdir(parents=True)
    config.write_text(
        f'[accounts.a]\nhost = "127.0.0.1"\nport = {aiosmtpd_server.port}\n'
        'dkim_key = "~/dkim.pem"\ndkim_selector = "web"\n'
    )
    raw = b"From: app@example.org\nTo: x@example.org\nBcc: audit@example.org\nSubject: s\n\nbody\n"
    done = run_cli(["sendmail", "--account", "a", "-t", "-i"], home, input=raw)
    assert done.returncode == 0, done.stderr
    received = aiosmtpd_server.wait_for(1)[0]
    assert sorted(received.rcpt_tos) == ["audit@example.org", "x@example.org"]
    assert b"Bcc" not in received.original_content
    signer = DkimSigner("example.org", "web", key)
    assert verify_each(received.original_content, [signer]) == [True]
