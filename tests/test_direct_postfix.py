"""Direct delivery to a real Postfix as the MX host, authenticated by DANE.

A DNS chain of its own is started here, after Postfix, because the TLSA record
must carry the hash of the certificate Postfix actually serves.
"""

from __future__ import annotations

import hashlib
import ssl
from pathlib import Path

import pytest

from smtpsubmit import Message, deliver_direct
from smtpsubmit.direct import PolicyCache
from smtpsubmit.direct.dane import spki_of
from tests.servers.dns import start_dns
from tests.servers.postfix import PostfixServer

pytestmark = [pytest.mark.postfix, pytest.mark.timeout(90)]


def test_postfix_as_a_dane_mx(postfix: PostfixServer, tmp_path: Path) -> None:
    pem = postfix.cert_file.read_text()  # the leaf first, then its chain
    end = pem.index("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----")
    digest = hashlib.sha256(spki_of(ssl.PEM_cert_to_DER_cert(pem[:end]))).hexdigest()
    dns = start_dns(
        {
            "capture.test": ["@ IN MX 10 mx.fixture.test."],
            "fixture.test": [
                "mx IN A 127.0.0.1",
                f"_{postfix.plain}._tcp.mx IN TLSA 3 1 1 {digest}",
            ],
        }
    )
    try:
        result = deliver_direct(
            Message(
                sender="app@sender.test", to="dane@capture.test", subject="via DANE", text="hi"
            ),
            resolver=dns.resolver(),
            port=postfix.plain,
            local_hostname="sender.test",
            policy_cache=PolicyCache(tmp_path),
            timeout=10,
        )
    finally:
        dns.stop()
    domain = result.domains["capture.test"]
    assert result.accepted == ["dane@capture.test"], domain.error
    assert (domain.mx, domain.policy, domain.tls_verified) == ("mx.fixture.test", "dane", True)
    assert domain.tls in ("TLSv1.2", "TLSv1.3")
    assert domain.reply is not None and domain.reply.code == 250
    assert b"Subject: via DANE" in postfix.wait_for_capture("dane@capture.test")
