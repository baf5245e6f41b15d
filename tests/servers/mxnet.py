"""A small Internet on loopback for direct delivery: signed DNS, MX hosts, MTA-STS policies.

``mxnet`` (session scope) starts the real DNSSEC chain of :mod:`tests.servers.dns`
with every scenario's zone, and an HTTPS policy server on 127.0.0.8 that
serves each domain's ``/.well-known/mta-sts.txt`` by Host name and counts
requests. MX hosts are started per test with ``mx_hosts(name, ...)``
(aiosmtpd on ``address:mxnet.smtp_port``; STARTTLS with the certificate named
for that host) and stopped at teardown. Ports are chosen free at start, so
every ``deliver_direct`` call passes ``port=`` and ``mta_sts_port=``
(``mxnet.deliver`` does). Traffic stays in 127.0.0.0/8.

Certificates: ``good`` ones come from the test CA (``ca_file``), ``rogue`` ones
from a CA nobody trusts; DANE hosts use rogue certificates on purpose, so only
the TLSA match can make them trusted. ``child`` ones come from an intermediate
CA under the rogue one (the server sends it in its chain), ``misnamed`` ones
from the rogue CA for a name that is not the host's. Hosts at ``::1`` need the
machine to listen on IPv6 loopback (``mxnet.ipv6``).
"""

from __future__ import annotations

import hashlib
import http.server
import socket
import ssl
import tempfile
import threading
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from smtpsubmit.direct import DirectResult, PolicyCache, deliver_direct
from smtpsubmit.direct.dane import spki_of
from tests.servers.dns import DnsServer, start_dns

POLICY_ADDRESS = "127.0.0.8"

# host name -> (address, certificate: "good" | "rogue" | None for no STARTTLS)
HOSTS: dict[str, tuple[str, str | None]] = {
    "mx1.alpha.test": ("127.0.0.2", "good"),
    "mx2.alpha.test": ("127.0.0.3", "good"),
    "a.equal.test": ("127.0.0.4", "good"),
    "b.equal.test": ("127.0.0.5", "good"),
    "fallback.test": ("127.0.0.6", None),
    "mx.dane.test": ("127.0.0.7", "rogue"),
    "mx.danebad.test": ("127.0.0.9", "rogue"),
    "mx.danenotls.test": ("127.0.0.10", None),
    "mx.sts.test": ("127.0.0.11", "good"),
    "rogue.stsother.test": ("127.0.0.12", "good"),
    "mx.stsother.test": ("127.0.0.13", "good"),
    "mx.stsbadcert.test": ("127.0.0.14", "rogue"),
    "mx.ststesting.test": ("127.0.0.15", "rogue"),
    "mx.plain.test": ("127.0.0.16", "rogue"),
    "mx.bogus.test": ("127.0.0.17", "good"),
    "mx.daneta.test": ("127.0.0.18", "rogue"),
    "mx.danetaspki.test": ("127.0.0.19", "rogue"),
    "mx.danetaother.test": ("127.0.0.20", "rogue"),
    "mx.danetaname.test": ("127.0.0.21", "misnamed"),
    "mx.danemix.test": ("127.0.0.22", "rogue"),
    "mx.danemixee.test": ("127.0.0.23", "rogue"),
    "mx.danetachild.test": ("127.0.0.24", "child"),
    "real.danecname.test": ("127.0.0.25", "rogue"),
    "real2.danecname.test": ("127.0.0.26", "rogue"),
    "real3.danecname.test": ("127.0.0.27", "rogue"),
    "mx.v6.test": ("::1", "good"),
    "mx.dual.test": ("::1", "good"),
}
DUAL_DEAD_ADDRESS = "127.0.0.28"  # mx.dual.test's A record: nothing listens there

POLICIES = {
    "sts.test": "version: STSv1\r\nmode: enforce\r\nmx: mx.sts.test\r\nmax_age: 86400\r\n",
    "stsother.test": "version: STSv1\nmode: enforce\nmx: mx.stsother.test\nmax_age: 86400\n",
    "stsbadcert.test": "version: STSv1\nmode: enforce\nmx: *.stsbadcert.test\nmax_age: 86400\n",
    "ststesting.test": "version: STSv1\nmode: testing\nmx: mx.ststesting.test\nmax_age: 86400\n",
}


def ipv6_loopback() -> bool:
    """Whether this machine can listen on ``::1``."""
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


def free_port(addresses: list[str]) -> int:
    """A TCP port free on every one of ``addresses``."""
    for _ in range(50):
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
        probe.close()
        socks = []
        try:
            for address in addresses:
                s = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET)
                socks.append(s)
                s.bind((address, port))
            return port
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no port free on every test address")


def _a(name: str) -> str:
    address = HOSTS[name][0]
    return f"{name}. IN {'AAAA' if ':' in address else 'A'} {address}"


def zones(port: int, digests: dict[str, str]) -> dict[str, list[str]]:
    """Every scenario's zone; ``digests`` holds the SHA-256 hex the TLSA records need."""
    tlsa = f"_{port}._tcp"
    tlsa_good, tlsa_other, tlsa_ta = digests["good"], digests["other"], digests["ta"]
    sts = [f"mta-sts IN A {POLICY_ADDRESS}"]

    def txt(policy_id: str) -> str:
        return f'_mta-sts IN TXT "v=STSv1; id={policy_id};"'

    return {
        "alpha.test": [
            "@ IN MX 10 mx1",
            "@ IN MX 20 mx2",
            _a("mx1.alpha.test"),
            _a("mx2.alpha.test"),
        ],
        "equal.test": ["@ IN MX 10 a", "@ IN MX 10 b", _a("a.equal.test"), _a("b.equal.test")],
        "fallback.test": [_a("fallback.test"), 'nothing IN TXT "no MX, no address"'],
        "nullmx.test": ["@ IN MX 0 ."],
        "shared.test": ["@ IN MX 10 mx2.alpha.test."],
        "bogus.test": ["@ IN MX 10 mx", _a("mx.bogus.test")],
        "dane.test": ["@ IN MX 10 mx", _a("mx.dane.test"), f"{tlsa}.mx IN TLSA 3 1 1 {tlsa_good}"],
        "danebad.test": [
            "@ IN MX 10 mx",
            _a("mx.danebad.test"),
            f"{tlsa}.mx IN TLSA 3 1 1 {tlsa_other}",
        ],
        "daneta.test": [  # DANE-TA only: the rogue CA, which issued mx.daneta.test's certificate
            "@ IN MX 10 mx",
            _a("mx.daneta.test"),
            f"{tlsa}.mx IN TLSA 2 0 1 {tlsa_ta}",
        ],
        "danetaspki.test": [  # DANE-TA by the rogue CA's public key
            "@ IN MX 10 mx",
            _a("mx.danetaspki.test"),
            f"{tlsa}.mx IN TLSA 2 1 1 {digests['ta_spki']}",
        ],
        "danetaother.test": [  # DANE-TA naming a CA that did not issue the host's certificate
            "@ IN MX 10 mx",
            _a("mx.danetaother.test"),
            f"{tlsa}.mx IN TLSA 2 0 1 {digests['good_ca']}",
        ],
        "danetaname.test": [  # the right CA, but the certificate is for another name
            "@ IN MX 10 mx",
            _a("mx.danetaname.test"),
            f"{tlsa}.mx IN TLSA 2 0 1 {tlsa_ta}",
        ],
        "danemix.test": [  # DANE-EE that matches nothing, DANE-TA that matches
            "@ IN MX 10 mx",
            _a("mx.danemix.test"),
            f"{tlsa}.mx IN TLSA 3 1 1 {tlsa_other}",
            f"{tlsa}.mx IN TLSA 2 0 1 {tlsa_ta}",
        ],
        "danemixee.test": [  # DANE-TA that matches nothing, DANE-EE that matches
            "@ IN MX 10 mx",
            _a("mx.danemixee.test"),
            f"{tlsa}.mx IN TLSA 2 0 1 {digests['good_ca']}",
            f"{tlsa}.mx IN TLSA 3 1 1 {digests['mx.danemixee.test']}",
        ],
        "danetachild.test": [  # the intermediate CA is the trust anchor, not the root
            "@ IN MX 10 mx",
            _a("mx.danetachild.test"),
            f"{tlsa}.mx IN TLSA 2 1 1 {digests['child_spki']}",
        ],
        "danecname.test": [
            "@ IN MX 10 mx",
            "mx IN CNAME real",  # TLSA at the expanded name only
            _a("real.danecname.test"),
            f"{tlsa}.real IN TLSA 3 1 1 {digests['real.danecname.test']}",
            "mx2 IN CNAME real2",  # TLSA at the MX host name only
            _a("real2.danecname.test"),
            f"{tlsa}.mx2 IN TLSA 3 1 1 {digests['real2.danecname.test']}",
            "mx3 IN CNAME real3",  # both: the expanded name's (a mismatch) wins
            _a("real3.danecname.test"),
            f"{tlsa}.real3 IN TLSA 3 1 1 {tlsa_other}",
            f"{tlsa}.mx3 IN TLSA 3 1 1 {digests['real3.danecname.test']}",
        ],
        "danecname2.test": ["@ IN MX 10 mx2.danecname.test."],
        # unsigned: its MX answer is not authenticated, so the (signed) MX host's TLSA
        # records, which match nothing, must not apply (RFC 7672 §2.2.1)
        "insecuremx.test": ["@ IN MX 10 mx.danebad.test."],
        "danecname3.test": ["@ IN MX 10 mx3.danecname.test."],
        "v6.test": ["@ IN MX 10 mx", _a("mx.v6.test")],
        "dual.test": ["@ IN MX 10 mx", f"mx IN A {DUAL_DEAD_ADDRESS}", _a("mx.dual.test")],
        "danenotls.test": [
            "@ IN MX 10 mx",
            _a("mx.danenotls.test"),
            f"{tlsa}.mx IN TLSA 3 1 1 {tlsa_good}",
        ],
        "plain.test": [
            "@ IN MX 10 mx",
            _a("mx.plain.test"),
            f"{tlsa}.mx IN TLSA 3 1 1 {tlsa_other}",
        ],
        "sts.test": ["@ IN MX 10 mx", _a("mx.sts.test"), txt("20260101"), *sts],
        "stsother.test": [
            "@ IN MX 10 rogue",
            "@ IN MX 20 mx",
            _a("rogue.stsother.test"),
            _a("mx.stsother.test"),
            txt("1"),
            *sts,
        ],
        "stsbadcert.test": ["@ IN MX 10 mx", _a("mx.stsbadcert.test"), txt("1"), *sts],
        "ststesting.test": ["@ IN MX 10 mx", _a("mx.ststesting.test"), txt("7"), *sts],
        # announces a policy that the policy server does not have (HTTP 404)
        "stsmissing.test": ["@ IN MX 10 mx2.alpha.test.", txt("1"), *sts],
    }


@dataclass
class Received:
    connection: int  # id of aiosmtpd's per-connection session
    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    tls: bool


@dataclass
class MxHandler:
    messages: list[Received] = field(default_factory=list)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.messages.append(
            Received(
                id(session),
                envelope.mail_from or "",
                list(envelope.rcpt_tos),
                bytes(envelope.original_content or b""),
                session.ssl is not None,
            )
        )
        return "250 2.0.0 OK: queued"


@dataclass
class MxServer:
    name: str
    address: str
    handler: MxHandler
    controller: Controller

    @property
    def messages(self) -> list[Received]:
        return self.handler.messages


class PolicyHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        host = (self.headers.get("Host") or "").split(":")[0]
        server: Any = self.server
        server.requests[host] += 1
        domain = host.removeprefix("mta-sts.")
        body = POLICIES.get(domain)
        if self.path != "/.well-known/mta-sts.txt" or body is None:
            self.send_error(404)
            return
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class MxNet:
    dns: DnsServer
    smtp_port: int
    https_port: int
    ca_file: str
    contexts: dict[str, ssl.SSLContext]
    policy_server: http.server.ThreadingHTTPServer
    ipv6: bool = True

    @property
    def policy_requests(self) -> Counter[str]:
        return self.policy_server.requests  # type: ignore[attr-defined, no-any-return]

    def deliver(self, message: Any, cache: Path, driver: Any = None, **kwargs: Any) -> DirectResult:
        """``deliver_direct`` on this network (``driver``: tests/drivers.py, default sync)."""
        kwargs.setdefault("resolver", self.dns.resolver())
        kwargs.setdefault("timeout", 5.0)
        run = driver.deliver_direct if driver is not None else deliver_direct
        return run(  # type: ignore[no-any-return]
            message,
            ca_file=self.ca_file,
            port=self.smtp_port,
            mta_sts_port=self.https_port,
            policy_cache=PolicyCache(cache),
            local_hostname="sender.test",
            **kwargs,
        )


def _leaf(
    ca: trustme.CA, name: str, *, root: trustme.CA | None = None
) -> tuple[ssl.SSLContext, bytes]:
    """A server context for ``name``; with ``root``, the chain it sends ends with that CA,
    as RFC 7672 §3.1.2 asks of servers that rely on DANE-TA."""
    leaf = ca.issue_cert(name)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    if root is None:
        leaf.configure_cert(ctx)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "chain.pem"
            path.write_bytes(
                leaf.private_key_pem.bytes()
                + b"".join(p.bytes() for p in leaf.cert_chain_pems)
                + root.cert_pem.bytes()
            )
            ctx.load_cert_chain(path)
    der = ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())
    return ctx, der


def _ca_der(ca: trustme.CA) -> bytes:
    return ssl.PEM_cert_to_DER_cert(ca.cert_pem.bytes().decode())


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="session")
def mxnet(tls_ca: trustme.CA, ca_file: str) -> Iterator[MxNet]:
    ipv6 = ipv6_loopback()
    addresses = sorted({a for a, _ in HOSTS.values() if ipv6 or ":" not in a} | {POLICY_ADDRESS})
    smtp_port, https_port = free_port(addresses), free_port([POLICY_ADDRESS])
    rogue = trustme.CA()
    child = rogue.create_child_ca()
    issuers = {"good": tls_ca, "rogue": rogue, "child": child, "misnamed": rogue}
    contexts: dict[str, ssl.SSLContext] = {}
    ders: dict[str, bytes] = {}
    for name, (_, kind) in HOSTS.items():
        if kind is not None:
            cert_name = "wrong.test" if kind == "misnamed" else name
            root = rogue if kind in ("rogue", "misnamed") else None
            contexts[name], ders[name] = _leaf(issuers[kind], cert_name, root=root)
    digests = {name: _sha256(spki_of(der)) for name, der in ders.items()}
    digests |= {
        "good": digests["mx.dane.test"],
        "other": _sha256(spki_of(_leaf(rogue, "other.test")[1])),
        "ta": _sha256(_ca_der(rogue)),
        "ta_spki": _sha256(spki_of(_ca_der(rogue))),
        "good_ca": _sha256(_ca_der(tls_ca)),
        "child_spki": _sha256(spki_of(_ca_der(child))),
    }
    dns = start_dns(
        zones(smtp_port, digests), unsigned=["plain.test", "insecuremx.test"], bogus=["bogus.test"]
    )
    leaf = tls_ca.issue_cert(*(f"mta-sts.{d}" for d in [*POLICIES, "stsmissing.test"]))
    policy_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    leaf.configure_cert(policy_ctx)
    httpd = http.server.ThreadingHTTPServer((POLICY_ADDRESS, https_port), PolicyHandler)
    httpd.requests = Counter()  # type: ignore[attr-defined]
    httpd.socket = policy_ctx.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
    )
    thread.start()
    try:
        yield MxNet(dns, smtp_port, https_port, ca_file, contexts, httpd, ipv6)
    finally:
        httpd.shutdown()
        httpd.server_close()
        dns.stop()


@pytest.fixture
def mx_hosts(mxnet: MxNet) -> Iterator[Callable[..., MxServer]]:
    """``start(name, tls=True, context=None)``: an aiosmtpd MX for ``name`` at its address
    (STARTTLS with ``context``, else the host's own certificate); stopped after the test."""
    started: list[MxServer] = []

    def start(name: str, *, tls: bool = True, context: ssl.SSLContext | None = None) -> MxServer:
        address, kind = HOSTS[name]
        if ":" in address and not mxnet.ipv6:
            pytest.skip("this machine cannot listen on ::1")
        handler = MxHandler()
        kwargs: dict[str, Any] = {}
        if context is not None:
            kwargs["tls_context"] = context
        elif tls and kind is not None:
            kwargs["tls_context"] = mxnet.contexts[name]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            controller = Controller(
                handler,
                hostname=address,
                port=mxnet.smtp_port,
                server_hostname=name,
                decode_data=False,
                ready_timeout=5.0,
                **kwargs,
            )
            controller.start()
        server = MxServer(name, address, handler, controller)
        started.append(server)
        return server

    yield start
    for server in started:
        server.controller.stop()
