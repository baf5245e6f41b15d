"""A real DNS on 127.0.0.1: NSD serving DNSSEC-signed zones, Unbound validating them.

Direct delivery asks DNS for MX, A, TXT and TLSA records and trusts TLSA only
when the resolver says the answer is authenticated (the AD bit). The honest
way to test that is the real chain: zones signed with ``ldns-signzone``,
served by NSD (authoritative), and resolved through Unbound with the test
zone's key as its trust anchor, so Unbound sets AD on validated answers.

``start_dns(zones)`` takes ``{origin: [record lines]}``; every zone is signed
unless listed in ``unsigned`` (answers without AD: no trust anchor covers
it). Zones listed in ``bogus`` are signed with one key while Unbound trusts
another, so validation fails and Unbound answers SERVFAIL, as it would for
forged answers. Both daemons run in the foreground from a temp
directory on free ports and are stopped by ``DnsServer.stop()``. Unbound
blocks ``.test`` by default (RFC 6761 local zones); the config turns that off.
Packages: nsd, unbound, ldnsutils (scripts/install-system-deps.sh).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import dns.flags
import dns.resolver

NSD = "/usr/sbin/nsd"
UNBOUND = "/usr/sbin/unbound"
SIGNZONE = "/usr/bin/ldns-signzone"
KEYGEN = "/usr/bin/ldns-keygen"


def free_udp_tcp_port() -> int:
    """A loopback port free for both TCP and UDP (DNS listens on both)."""
    for _ in range(50):
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
        finally:
            tcp.close()
            udp.close()
    raise RuntimeError("no free TCP+UDP port on 127.0.0.1")


@dataclass
class DnsServer:
    root: Path
    authoritative_port: int
    resolver_port: int
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def resolver(self, *, dnssec: bool = True, lifetime: float = 5.0) -> dns.resolver.Resolver:
        """A dnspython resolver that asks the validating Unbound (DO bit set)."""
        return self._resolver(self.resolver_port, dnssec, lifetime)

    def authoritative_resolver(self, lifetime: float = 5.0) -> dns.resolver.Resolver:
        """Straight to NSD: the same data, but nothing validates it, so never AD."""
        return self._resolver(self.authoritative_port, True, lifetime)

    @staticmethod
    def _resolver(port: int, dnssec: bool, lifetime: float) -> dns.resolver.Resolver:
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = ["127.0.0.1"]
        resolver.port = port
        resolver.lifetime = lifetime
        if dnssec:
            resolver.use_edns(0, dns.flags.DO, 1232)
        return resolver

    def log(self) -> str:
        parts = []
        for name in ("nsd.log", "unbound.log"):
            path = self.root / name
            if path.exists():
                parts.append(f"--- {name} ---\n{path.read_text(errors='replace')[-4000:]}")
        return "\n".join(parts)

    def stop(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.processes:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        shutil.rmtree(self.root, ignore_errors=True)


def start_dns(
    zones: Mapping[str, Iterable[str]],
    *,
    unsigned: Iterable[str] = (),
    bogus: Iterable[str] = (),
    ttl: int = 60,
) -> DnsServer:
    """Write, sign and serve ``zones``; return once Unbound answers a validated query."""
    for tool in (NSD, UNBOUND, SIGNZONE, KEYGEN):
        if not Path(tool).exists():
            raise RuntimeError(f"{tool} is missing: run scripts/install-system-deps.sh")
    root = Path(tempfile.mkdtemp(prefix="smtpsubmit-dns-"))
    server = DnsServer(root, free_udp_tcp_port(), free_udp_tcp_port())
    try:
        anchors = _write_zones(root, zones, set(unsigned), set(bogus), ttl)
        _write_nsd_conf(root, server.authoritative_port, zones, set(unsigned))
        _write_unbound_conf(root, server, zones, anchors)
        server.processes.append(_spawn([NSD, "-d", "-c", str(root / "nsd.conf")], root))
        server.processes.append(_spawn([UNBOUND, "-d", "-c", str(root / "unbound.conf")], root))
        _wait_ready(server, next(iter(zones)))
    except BaseException:
        server.stop()
        raise
    return server


def _origin(name: str) -> str:
    return name.rstrip(".") + "."


def _keygen(root: Path, origin: str) -> str:
    return subprocess.run(
        [KEYGEN, "-a", "ECDSAP256SHA256", "-k", origin],
        cwd=root,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def _write_zones(
    root: Path,
    zones: Mapping[str, Iterable[str]],
    unsigned: set[str],
    bogus: set[str],
    ttl: int,
) -> list[Path]:
    anchors = []
    for name, records in zones.items():
        origin = _origin(name)
        text = (
            f"$ORIGIN {origin}\n$TTL {ttl}\n"
            f"@ IN SOA ns.{origin} hostmaster.{origin} 1 3600 600 86400 {ttl}\n"
            f"@ IN NS ns.{origin}\nns IN A 127.0.0.1\n" + "\n".join(records) + "\n"
        )
        zone = root / f"{origin}zone"
        zone.write_text(text)
        if name in unsigned:
            continue
        key = _keygen(root, origin)
        subprocess.run(
            [SIGNZONE, "-f", str(zone) + ".signed", str(zone), key],
            cwd=root,
            check=True,
            capture_output=True,
        )
        # A bogus zone: Unbound trusts a key that signed nothing, so nothing validates.
        anchor = _keygen(root, origin) if name in bogus else key
        anchors.append(root / f"{anchor}.key")
    return anchors


def _write_nsd_conf(
    root: Path, port: int, zones: Mapping[str, Iterable[str]], unsigned: set[str]
) -> None:
    lines = [
        "server:",
        f"  ip-address: 127.0.0.1@{port}",
        f"  port: {port}",
        '  username: ""',
        f'  zonesdir: "{root}"',
        f'  pidfile: "{root}/nsd.pid"',
        '  database: ""',
        f'  zonelistfile: "{root}/zone.list"',
        f'  xfrdfile: "{root}/xfrd.state"',
        f'  logfile: "{root}/nsd.log"',
        "  verbosity: 1",
        "remote-control:",
        "  control-enable: no",
    ]
    for name in zones:
        origin = _origin(name)
        suffix = "" if name in unsigned else ".signed"
        lines += ["zone:", f'  name: "{origin}"', f'  zonefile: "{origin}zone{suffix}"']
    (root / "nsd.conf").write_text("\n".join(lines) + "\n")


def _write_unbound_conf(
    root: Path, server: DnsServer, zones: Mapping[str, Iterable[str]], anchors: list[Path]
) -> None:
    lines = [
        "server:",
        "  interface: 127.0.0.1",
        f"  port: {server.resolver_port}",
        "  do-not-query-localhost: no",
        '  username: ""',
        '  chroot: ""',
        f'  directory: "{root}"',
        f'  pidfile: "{root}/unbound.pid"',
        f'  logfile: "{root}/unbound.log"',
        "  use-syslog: no",
        '  module-config: "validator iterator"',
        "  qname-minimisation: no",
        "  do-ip6: no",
        "  verbosity: 1",
        "  cache-max-ttl: 1",  # tests read each answer fresh
        *(f'  trust-anchor-file: "{anchor}"' for anchor in anchors),
    ]
    tlds = {_origin(name).rstrip(".").rsplit(".", 1)[-1] + "." for name in zones}
    lines += [f'  local-zone: "{tld}" nodefault' for tld in sorted(tlds)]
    lines += ["remote-control:", "  control-enable: no"]
    for name in zones:
        lines += [
            "stub-zone:",
            f'  name: "{_origin(name)}"',
            f"  stub-addr: 127.0.0.1@{server.authoritative_port}",
        ]
    (root / "unbound.conf").write_text("\n".join(lines) + "\n")


def _spawn(argv: list[str], root: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        argv,
        cwd=root,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _wait_ready(server: DnsServer, zone: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    resolver = server.resolver(lifetime=1.0)
    last: Exception | None = None
    while time.monotonic() < deadline:
        for proc in server.processes:
            if proc.poll() is not None:
                raise RuntimeError(f"a DNS daemon exited ({proc.args[0]})\n{server.log()}")
        try:
            resolver.resolve(_origin(zone), "SOA")
            return
        except Exception as exc:
            last = exc
            time.sleep(0.05)
    raise RuntimeError(f"DNS not ready after {timeout} s: {last!r}\n{server.log()}")
