"""``smtpsubmit probe``: capabilities, TLS and certificate verification results."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.servers.fakesmtp import Close, Responder, Send
from tests.test_cli_send import home, run_cli

__all__ = ["home"]


def probe_json(home: Path, *args: str) -> tuple[int, dict[str, Any], str]:
    result = run_cli(["probe", *args, "--json", "--timeout", "10"], home)
    report = json.loads(result.stdout) if result.stdout.strip() else {}
    return result.returncode, report, result.stderr


def test_probe_starttls_verified(aiosmtpd_starttls: Any, ca_file: str, home: Path) -> None:
    code, report, err = probe_json(
        home, f"127.0.0.1:{aiosmtpd_starttls.port}", "--ca-file", ca_file
    )
    assert code == 0, err
    assert report["connected"] is True
    assert report["greeting"].startswith("220 mx.fixture.test")
    assert report["starttls"] == "done"
    assert report["tls"]["version"] in ("TLSv1.2", "TLSv1.3")
    assert report["tls"]["cipher"]
    assert report["tls"]["verification"] == "ok" and report["tls"]["verified"] is True
    assert "mx.fixture.test" in report["tls"]["certificate"]["names"]
    assert report["tls"]["certificate"]["not_after"]
    assert sorted(report["auth_mechanisms"]) == ["LOGIN", "PLAIN"]
    assert report["size_limit"] == 33554432


def test_probe_untrusted_certificate_reported_not_fatal(aiosmtpd_starttls: Any, home: Path) -> None:
    code, report, err = probe_json(home, f"smtp://127.0.0.1:{aiosmtpd_starttls.port}")
    assert code == 0, err
    tls = report["tls"]
    assert tls["verified"] is False
    assert tls["verification"].startswith("failed: ")
    assert "ca_file" in tls["verification"]  # the library's hint survives
    assert tls["certificate"]["subject"]  # shown although unverified (DER decoded)
    assert tls["certificate"]["issuer"]
    assert report["auth_mechanisms"]


def test_probe_plain_server_table(aiosmtpd_server: Any, home: Path) -> None:
    result = run_cli(["probe", f"127.0.0.1:{aiosmtpd_server.port}"], home)
    assert result.returncode == 0, result.stderr
    assert "not offered" in result.stdout  # STARTTLS
    assert "SMTPUTF8" in result.stdout


def test_probe_closed_port_is_75(home: Path, closed_port: int) -> None:
    code, report, err = probe_json(home, f"127.0.0.1:{closed_port}")
    assert code == 75, err
    assert report["connected"] is False
    assert "refused" in report["error"]


def test_probe_help(home: Path) -> None:
    result = run_cli(["probe", "--help"], home)
    assert result.returncode == 0
    assert "examples:" in result.stdout and "--ca-file" in result.stdout


@pytest.mark.postfix
def test_probe_postfix_plain_port(postfix: Any, home: Path) -> None:
    code, report, err = probe_json(
        home, f"127.0.0.1:{postfix.plain}", "--ca-file", str(postfix.ca_file)
    )
    assert code == 0, err
    assert report["starttls"] == "done"
    assert report["tls"]["version"] in ("TLSv1.2", "TLSv1.3")
    assert report["tls"]["verification"] == "ok"
    assert set(report["auth_mechanisms"]) >= {"PLAIN", "SCRAM-SHA-256"}
    assert report["size_limit"] == 10240000
    assert "STARTTLS" not in report["capabilities"]  # after TLS


@pytest.mark.postfix
def test_probe_postfix_wrong_ca(postfix: Any, ca_file: str, home: Path) -> None:
    # ca_file is the aiosmtpd fixtures' CA, not the one that signed Postfix's certificate.
    code, report, err = probe_json(home, f"127.0.0.1:{postfix.plain}", "--ca-file", ca_file)
    assert code == 0, err
    assert report["tls"]["verified"] is False
    assert "verification failed" in report["tls"]["verification"]
    assert report["tls"]["certificate"]["issuer"]
    assert report["auth_mechanisms"]


def test_probe_failed_handshake_still_reports_ehlo(fake_smtp: Any, home: Path) -> None:
    """Issue 13.19: EHLO was answered, the handshake after STARTTLS failed (twice: with and
    without verification). The report says so instead of ``"esmtp": null``."""
    fake = fake_smtp(
        Responder(
            capabilities=("STARTTLS", "SIZE 1000", "AUTH PLAIN LOGIN"),
            replies={"STARTTLS": [Send(b"220 go ahead\r\n"), Send(b"not TLS at all\r\n"), Close()]},
        ),
        check=False,
    )
    code, report, err = probe_json(home, f"127.0.0.1:{fake.port}")
    assert code == 0, err  # an SMTP conversation happened
    assert report["connected"] is True
    assert report["greeting"].startswith("220 fake.test")
    assert report["esmtp"] is True
    assert report["starttls"] == "failed"
    assert report["tls"]["established"] is False
    assert report["tls"]["mode"] == "starttls"
    assert report["tls"]["verification"].startswith("failed: ")
    assert report["capabilities"]["SIZE"] == "1000"  # what the server said before TLS
    assert fake.connections == 2


def test_probe_capabilities_come_from_the_client(fake_smtp: Any, home: Path) -> None:
    """AUTH and SIZE as the library reads them (one parser): the old ``AUTH=`` form counts,
    an absurd SIZE means no limit."""
    fake = fake_smtp(
        Responder(capabilities=("AUTH PLAIN", "AUTH=LOGIN", "SIZE 99999999999999999999")),
    )
    code, report, err = probe_json(home, f"127.0.0.1:{fake.port}")
    assert code == 0, err
    assert report["esmtp"] is True and report["starttls"] == "not offered"
    assert report["auth_mechanisms"] == ["PLAIN", "LOGIN"]
    assert report["size_limit"] is None
    assert report["tls"] is None
