"""MTA-STS (RFC 8461): discover, fetch, parse, cache and apply a domain's policy.

A domain announces a policy with a ``_mta-sts`` TXT record (``v=STSv1;
id=…``) and serves it at ``https://mta-sts.<domain>/.well-known/mta-sts.txt``.
The fetch is verified HTTPS (the system store, or ``ca_file`` alone), follows
no redirect, reads at most 64 KiB and is bounded in time (RFC 8461 §3.3). The
policy host is resolved with the same resolver as the MX hosts, so one DNS
view serves the whole delivery.

Policies are cached on disk by domain with their id and ``max_age``; a fresh
cached policy whose id still matches the TXT record is used without a fetch,
and a cached policy outlives a missing TXT record or a failed fetch until it
expires (RFC 8461 §5.1), which is what protects it against downgrades.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import re
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import dns.resolver

from smtpsubmit.direct.resolve import DnsFailure, lookup, lookup_addresses

__all__ = [
    "Discovery",
    "Policy",
    "PolicyCache",
    "PolicyError",
    "default_cache_dir",
    "discover",
    "https_context",
    "mx_matches",
]

MAX_POLICY_SIZE = 64 * 1024
MAX_AGE_LIMIT = 31557600  # RFC 8461 §3.2: at most about a year
_ID = re.compile(r"^[A-Za-z0-9]{1,32}$")
_SAFE_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{0,252}$")


class PolicyError(Exception):
    """The policy could not be fetched or is invalid (RFC 8460 ``sts-policy-fetch-error``)."""

    def __init__(self, message: str, result_type: str = "sts-policy-fetch-error") -> None:
        super().__init__(message)
        self.result_type = result_type


@dataclass(frozen=True)
class Policy:
    """A parsed MTA-STS policy, with the TXT id it was fetched for and when."""

    domain: str
    id: str
    mode: str  # "enforce", "testing" or "none"
    mx: tuple[str, ...]
    max_age: int
    fetched: float

    def fresh(self, now: float) -> bool:
        return now < self.fetched + self.max_age

    def allows(self, mx_host: str) -> bool:
        return any(mx_matches(pattern, mx_host) for pattern in self.mx)


def mx_matches(pattern: str, host: str) -> bool:
    """RFC 8461 §4.1: exact match, or ``*.`` standing for exactly one left-most label."""
    pattern, host = pattern.lower().rstrip("."), host.lower().rstrip(".")
    if pattern.startswith("*."):
        head, _, rest = host.partition(".")
        return bool(head) and rest == pattern[2:]
    return pattern == host


def parse_policy(domain: str, policy_id: str, text: str, now: float) -> Policy:
    """RFC 8461 §3.2: ``key: value`` lines; unknown keys ignored, bad values rejected."""
    values: dict[str, str] = {}
    mx: list[str] = []
    for line in text.splitlines():
        key, colon, value = line.partition(":")
        if not colon:
            continue
        key, value = key.strip(), value.strip()
        if key == "mx":
            mx.append(value)
        else:
            values.setdefault(key, value)
    if values.get("version") != "STSv1":
        raise PolicyError("the policy has no 'version: STSv1' line", "sts-policy-invalid")
    mode = values.get("mode", "")
    if mode not in ("enforce", "testing", "none"):
        raise PolicyError(f"the policy mode {mode!r} is not valid", "sts-policy-invalid")
    age = values.get("max_age", "")
    if not age.isdigit() or len(age) > 10:
        raise PolicyError("the policy's max_age is missing or not a number", "sts-policy-invalid")
    if mode != "none" and not mx:
        raise PolicyError("the policy lists no mx pattern", "sts-policy-invalid")
    return Policy(domain, policy_id, mode, tuple(mx), min(int(age), MAX_AGE_LIMIT), now)


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/smtpsubmit/mta-sts`` (else ``~/.cache/…``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "smtpsubmit" / "mta-sts"


class PolicyCache:
    """Policies on disk, one JSON file per domain; a broken file is treated as absent."""

    def __init__(self, directory: str | os.PathLike[str] | None = None) -> None:
        self.directory = Path(directory) if directory is not None else default_cache_dir()

    def _path(self, domain: str) -> Path:
        if not _SAFE_NAME.match(domain):  # never a path outside the directory
            domain = hashlib.sha256(domain.encode()).hexdigest()
        return self.directory / f"{domain}.json"

    def get(self, domain: str) -> Policy | None:
        try:
            data = json.loads(self._path(domain).read_text("utf-8"))
            data["mx"] = tuple(data["mx"])
            return Policy(**data)
        except (OSError, ValueError, TypeError, KeyError):
            return None

    def put(self, policy: Policy) -> None:
        """Atomically (write then rename), so a crash never leaves half a policy."""
        with contextlib.suppress(OSError):
            self.directory.mkdir(parents=True, exist_ok=True)
            path = self._path(policy.domain)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(asdict(policy)), "utf-8")
            os.replace(tmp, path)


def https_context(ca_file: str | None) -> ssl.SSLContext:
    """Verified, TLS >= 1.2; ``ca_file`` replaces the system store, as for ``Server``."""
    context = ssl.create_default_context(cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def txt_id(resolver: dns.resolver.Resolver, domain: str) -> str | None:
    """The id of the domain's single valid ``v=STSv1`` TXT record, else ``None``."""
    records = lookup(resolver, f"_mta-sts.{domain}", "TXT")
    found = []
    for value in records.values:
        text = "".join(part for part in re.findall(r'"((?:[^"\\]|\\.)*)"', value)) or value
        if text.startswith("v=STSv1"):
            found.append(text)
    if len(found) != 1:
        return None  # RFC 8461 §3.1: zero or several STSv1 records mean no policy
    fields = dict(f.strip().partition("=")[::2] for f in found[0].split(";") if f.strip())
    policy_id = fields.get("id", "")
    return policy_id if _ID.match(policy_id) else None


def fetch_policy(
    resolver: dns.resolver.Resolver,
    domain: str,
    *,
    context: ssl.SSLContext,
    port: int,
    timeout: float,
) -> str:
    """GET the policy text over verified HTTPS; any deviation is a :class:`PolicyError`."""
    host = f"mta-sts.{domain}"
    try:
        addresses = lookup_addresses(resolver, host).values
    except DnsFailure as exc:
        raise PolicyError(f"cannot resolve {host}: {exc}") from None
    if not addresses:
        raise PolicyError(f"{host} has no address")
    last: Exception | None = None
    for address in addresses:
        try:
            return _get(host, address, port, context, timeout)
        except (OSError, http.client.HTTPException) as exc:
            last = exc
        except PolicyError:
            raise
    result = "sts-webpki-invalid" if isinstance(last, ssl.SSLCertVerificationError) else None
    raise PolicyError(
        f"fetching https://{host}/ failed: {last}", result or "sts-policy-fetch-error"
    )


def _get(host: str, address: str, port: int, context: ssl.SSLContext, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    raw = socket.create_connection((address, port), timeout=timeout)
    try:
        sock = context.wrap_socket(raw, server_hostname=host)
    except BaseException:
        raw.close()
        raise
    conn = http.client.HTTPSConnection(host, port, timeout=timeout, context=context)
    conn.sock = sock  # connected to the address our resolver gave, verified for `host`
    try:
        conn.request("GET", "/.well-known/mta-sts.txt", headers={"Connection": "close"})
        response = conn.getresponse()
        if response.status != 200:  # RFC 8461 §3.3: no redirects, only 200
            raise PolicyError(f"https://{host}/.well-known/mta-sts.txt: HTTP {response.status}")
        ctype = (response.getheader("Content-Type") or "").split(";")[0].strip().lower()
        if ctype != "text/plain":
            raise PolicyError(f"the policy is served as {ctype or 'no type'!r}, not text/plain")
        body = b""
        while len(body) <= MAX_POLICY_SIZE:
            if time.monotonic() > deadline:
                raise PolicyError(f"fetching the policy from {host} took over {timeout:g} s")
            chunk = response.read(8192)
            if not chunk:
                break
            body += chunk
        if len(body) > MAX_POLICY_SIZE:
            raise PolicyError(f"the policy from {host} is larger than 64 KiB")
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise PolicyError(f"the policy from {host} is not UTF-8", "sts-policy-invalid") from None
    finally:
        conn.close()


@dataclass
class Discovery:
    """The policy to apply (if any) and why; ``failure`` feeds TLS-RPT."""

    policy: Policy | None
    fetched: bool = False
    failure: PolicyError | None = None


def discover(
    resolver: dns.resolver.Resolver,
    domain: str,
    cache: PolicyCache,
    *,
    context: ssl.SSLContext,
    port: int,
    timeout: float,
    clock: Callable[[], float] = time.time,
) -> Discovery:
    """RFC 8461 §5.1: TXT id, then the cache or a fetch, keeping a fresh cached policy
    when the TXT record or the fetch fails."""
    now = clock()
    cached = cache.get(domain)
    if cached is not None and not cached.fresh(now):
        cached = None
    try:
        policy_id = txt_id(resolver, domain)
    except DnsFailure:
        policy_id = None
    if policy_id is None:
        return Discovery(cached)
    if cached is not None and cached.id == policy_id:
        return Discovery(cached)
    try:
        text = fetch_policy(resolver, domain, context=context, port=port, timeout=timeout)
        policy = parse_policy(domain, policy_id, text, now)
    except PolicyError as exc:
        return Discovery(cached, failure=exc)
    cache.put(policy)
    return Discovery(policy, fetched=True)
