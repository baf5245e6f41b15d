"""``smtpsubmit send --direct`` and ``smtpsubmit probe --mx`` against the loopback MX network."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.servers.mxnet import MxNet
from tests.test_cli_send import home, run_cli

__all__ = ["home"]


def _direct_flags(mxnet: MxNet, tmp_path: Path) -> list[str]:
    return [
        "--dns-server",
        f"127.0.0.1:{mxnet.dns.resolver_port}",
        "--port",
        str(mxnet.smtp_port),
        "--mta-sts-port",
        str(mxnet.https_port),
        "--ca-file",
        mxnet.ca_file,
        "--timeout",
        "5",
    ]


def test_send_direct_delivers_per_domain(
    mxnet: MxNet, mx_hosts: Any, home: Path, tmp_path: Path
) -> None:
    dane, sts = mx_hosts("mx.dane.test"), mx_hosts("mx.sts.test")
    result = run_cli(
        [
            "send",
            "--direct",
            "--from",
            "app@sender.test",
            "--to",
            "a@dane.test",
            "--to",
            "b@sts.test",
            "--to",
            "c@nullmx.test",
            "--subject",
            "direct",
            "--text",
            "hi",
            "--mta-sts-cache",
            str(tmp_path / "cache"),
            "--json",
            *_direct_flags(mxnet, tmp_path),
        ],
        home,
    )
    assert result.returncode == 69, result.stderr  # c@nullmx.test is refused for good
    report = json.loads(result.stdout)
    assert sorted(report["accepted"]) == ["a@dane.test", "b@sts.test"]
    assert report["domains"]["dane.test"]["policy"] == "dane"
    assert report["domains"]["sts.test"]["policy"] == "mta-sts:enforce"
    assert report["refused"]["c@nullmx.test"]["enhanced"] == "5.1.10"
    assert len(dane.messages) == len(sts.messages) == 1


def test_send_direct_deferred_is_75(mxnet: MxNet, home: Path, tmp_path: Path) -> None:
    result = run_cli(
        [
            "send",
            "--direct",
            "--from",
            "app@sender.test",
            "--to",
            "a@alpha.test",
            "--text",
            "hi",
            "--mta-sts-cache",
            str(tmp_path / "cache"),
            *_direct_flags(mxnet, tmp_path),
        ],
        home,
    )
    assert result.returncode == 75, result.stderr
    assert "deferred a@alpha.test" in result.stdout


def test_probe_mx_reports_policy_tlsa_and_tls(
    mxnet: MxNet, mx_hosts: Any, home: Path, tmp_path: Path
) -> None:
    mx_hosts("mx.dane.test")
    result = run_cli(
        ["probe", "--mx", "dane.test", "--json", *_direct_flags(mxnet, tmp_path)], home
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    [host] = report["mx"]
    assert host["host"] == "mx.dane.test" and host["addresses"] == ["127.0.0.7"]
    assert host["addresses_authenticated"] is True and host["tlsa"]["authenticated"] is True
    assert host["tls"]["version"] in ("TLSv1.2", "TLSv1.3")
    assert host["tls"]["verified"] is False and host["tls"]["dane_match"] is True

    mx_hosts("mx.sts.test")
    result = run_cli(["probe", "--mx", "sts.test", *_direct_flags(mxnet, tmp_path)], home)
    assert result.returncode == 0, result.stderr
    assert "MTA-STS: enforce (id 20260101; mx mx.sts.test)" in result.stdout
    assert "verification: ok" in result.stdout


def test_probe_mx_matches_dane_ta_and_follows_a_cname_as_delivery_does(
    mxnet: MxNet, mx_hosts: Any, home: Path, tmp_path: Path
) -> None:
    mx_hosts("mx.daneta.test")
    result = run_cli(["probe", "--mx", "daneta.test", *_direct_flags(mxnet, tmp_path)], home)
    assert result.returncode == 0, result.stderr
    assert "DANE: match (2 0 1 " in result.stdout

    mx_hosts("mx.danetaname.test")
    result = run_cli(["probe", "--mx", "danetaname.test", *_direct_flags(mxnet, tmp_path)], home)
    assert "DANE: NO MATCH: the server's certificate names wrong.test" in result.stdout

    mx_hosts("real.danecname.test")  # mx.danecname.test is an alias; its TLSA is at real.
    flags = ["--json", *_direct_flags(mxnet, tmp_path)]
    result = run_cli(["probe", "--mx", "danecname.test", *flags], home)
    [host] = json.loads(result.stdout)["mx"]
    assert host["tlsa"]["base"] == "real.danecname.test" and host["tls"]["dane_match"] is True


def test_probe_mx_applies_dane_only_under_an_authenticated_mx_answer(
    mxnet: MxNet, mx_hosts: Any, home: Path, tmp_path: Path
) -> None:
    # insecuremx.test (unsigned) points at mx.danebad.test, whose signed TLSA matches nothing:
    # delivery ignores those records (RFC 7672 §2.2.1), and the probe must say the same.
    mx_hosts("mx.danebad.test")
    flags = ["--json", *_direct_flags(mxnet, tmp_path)]
    result = run_cli(["probe", "--mx", "insecuremx.test", *flags], home)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    [host] = report["mx"]
    assert report["mx_authenticated"] is False and host["tlsa"]["records"]
    assert host["dane"] is False and "dane_match" not in host["tls"]
    result = run_cli(["probe", "--mx", "insecuremx.test", *flags[1:]], home)
    assert "DANE: not applied" in result.stdout and "NO MATCH" not in result.stdout

    result = run_cli(["probe", "--mx", "danebad.test", *flags], home)
    [host] = json.loads(result.stdout)["mx"]
    assert host["dane"] is True and host["tls"]["dane_match"] is False


def test_probe_mx_nxdomain_is_68(mxnet: MxNet, home: Path, tmp_path: Path) -> None:
    result = run_cli(["probe", "--mx", "nosuch.alpha.test", *_direct_flags(mxnet, tmp_path)], home)
    assert result.returncode == 68, result.stderr
    assert "does not exist" in result.stdout
