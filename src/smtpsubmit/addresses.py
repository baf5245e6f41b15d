"""Mailbox addresses: the one strict parser for every address a message carries.

Used for the fields of a composed :class:`~smtpsubmit.message.Message`, for
the From/To/Cc/Bcc fields of a ready message (library and ``sendmail -t``
alike), and for caller-given address fields such as Reply-To.

Addresses are parsed by the stdlib header parser (``email.headerregistry``)
and checked by ``email-validator``; anything the parser flags as a defect —
the ambiguous forms behind CVE-2023-27043 among them — is rejected, never
repaired. There are no hand-written address regexes.
"""

from __future__ import annotations

import email.errors
import email.policy
import functools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

from smtpsubmit import mime
from smtpsubmit.envelope import validate_addr_spec
from smtpsubmit.errors import MessageError

__all__: list[str] = []

HEADER_FACTORY = email.policy.default.header_factory


@dataclass(frozen=True)
class Address:
    """A validated mailbox; ``domain`` as written when ASCII, else the U-label."""

    display_name: str
    local: str
    domain: str
    ascii_domain: str

    @property
    def needs_utf8(self) -> bool:
        return not self.local.isascii()

    @property
    def key(self) -> tuple[str, str]:
        """Identity for de-duplication: domains compare case-insensitively."""
        return (self.local, self.ascii_domain.lower())

    def spec(self, utf8: bool) -> str:
        return f"{self.local}@{self.domain if utf8 else self.ascii_domain}"


def split_address_list(text: str, what: str) -> list[str]:
    """Split at top-level ``,`` / ``;``, refusing unbalanced quotes, comments or ``<>``.

    This only finds the separators; each piece is then parsed by the stdlib.
    An unbalanced delimiter is the CVE-2023-27043 family and is rejected.
    """
    pieces: list[str] = []
    current: list[str] = []
    quoted = angle = escaped = False
    depth = 0
    for ch in text:
        if escaped:
            escaped = False
        elif ch == "\\" and (quoted or depth):
            escaped = True
        elif quoted:
            quoted = ch != '"'
        elif ch == "(":
            depth += 1
        elif ch == ")":
            if not depth:
                raise MessageError(f"{what}: unbalanced ')' in {text!r}")
            depth -= 1
        elif depth:
            pass
        elif ch == '"':
            quoted = True
        elif ch in "<>":
            if angle == (ch == "<"):
                raise MessageError(f"{what}: unbalanced '{ch}' in {text!r}")
            angle = ch == "<"
        elif ch in ",;" and not angle:
            pieces.append("".join(current))
            current = []
            continue
        current.append(ch)
    if quoted or angle or depth or escaped:
        raise MessageError(f"{what}: unbalanced quote, comment or '<' in {text!r}")
    pieces.append("".join(current))
    return [piece.strip() for piece in pieces if piece.strip()]


def _parse_header(value: str) -> tuple[Any, list[email.errors.MessageDefect]]:
    """The stdlib's address-list parse and its defects (bar a non-ASCII local part).

    The parser can also crash on hostile input (e.g. ``alice@``): that too is
    an invalid address, not a bug to pass on.
    """
    try:
        header = HEADER_FACTORY("To", value)
    except Exception as exc:
        raise MessageError(f"{value!r} cannot be parsed as an address") from exc
    defects = [d for d in header.defects if not isinstance(d, email.errors.NonASCIILocalPartDefect)]
    return header, defects


def parse_address(text: str, what: str) -> Address:
    """One mailbox, ``Name <a@b>`` or ``a@b``; anything ambiguous is refused."""
    return _parse_address_cached(text, what)


# A pure function of immutable strings with an immutable result (errors are not
# cached): bulk senders repeat the same sender and recipients message after message.
@functools.lru_cache(maxsize=4096)
def _parse_address_cached(text: str, what: str) -> Address:
    if not mime.is_safe_text(text):
        raise MessageError(f"{what}: {text!r} contains control characters")
    header, defects = _parse_header(text)
    groups = header.groups
    if defects or len(groups) != 1 or groups[0].display_name is not None:
        raise MessageError(f"{what}: {text!r} is not a single unambiguous address")
    (address,) = header.addresses
    mime.check_name(address.display_name, f"{what}: display name")
    return _validated(address.display_name, address.addr_spec, what)


@functools.lru_cache(maxsize=4096)  # pure, immutable result; see _parse_address_cached
def _validated(display_name: str, spec: str, what: str) -> Address:
    try:
        valid = validate_addr_spec(spec)  # the one address check, shared with the envelope
    except MessageError as exc:
        raise MessageError(f"{what}: {exc}") from exc
    written = spec.rpartition("@")[2]
    if written.isascii():  # keep the caller's spelling (and case) of an ASCII domain
        return Address(display_name, valid.local_part, written, written)
    return Address(display_name, valid.local_part, valid.domain, str(valid.ascii_domain))


def parse_address_field(value: object, what: str) -> list[Address]:
    """``str`` with ``,``/``;`` separators, or a sequence of such strings."""
    items: Iterable[object] = [value] if isinstance(value, str) else cast(Iterable[object], value)
    if not isinstance(items, Iterable):
        raise MessageError(f"{what}: expected a string or a sequence of strings")
    result: list[Address] = []
    for item in items:
        if not isinstance(item, str):
            raise MessageError(f"{what}: expected a string, got {type(item).__name__}")
        if not mime.is_safe_text(item):
            raise MessageError(f"{what}: {item!r} contains control characters")
        result.extend(parse_address(piece, what) for piece in split_address_list(item, what))
    return result


def single_sender(value: object) -> Address:
    """The ``sender`` of a composed message: exactly one address."""
    if not isinstance(value, str) or not value.strip():
        raise MessageError("sender: a sender address is required")
    if not mime.is_safe_text(value):
        raise MessageError(f"sender: {value!r} contains control characters")
    addresses = split_address_list(value, "sender")
    if len(addresses) != 1:
        raise MessageError(f"sender: {value!r} must be exactly one address")
    return parse_address(addresses[0], "sender")


def parse_header_addresses(value: str, what: str) -> list[Address]:
    """Addresses of a header field as written in a ready message: groups allowed.

    The strict parse of RFC 5322 address lists for ready messages (the
    library's and ``sendmail -t``'s): any defect the stdlib parser reports —
    ``alice@example.org <bob@evil.example>`` among them — is refused, so a
    recipient is never guessed (CVE-2023-27043).
    """
    if not mime.is_safe_text(value, allow_tab=True):
        raise MessageError(f"{what}: {value!r} has control characters or is not UTF-8")
    header, defects = _parse_header(value)
    if defects:
        raise MessageError(f"{what}: {value!r} is not an unambiguous address list")
    return [_validated(a.display_name, a.addr_spec, what) for a in header.addresses]


def dedupe(addresses: Iterable[Address]) -> list[Address]:
    """Addresses in order, each mailbox once."""
    seen: set[tuple[str, str]] = set()
    unique = []
    for address in addresses:
        if address.key not in seen:
            seen.add(address.key)
            unique.append(address)
    return unique
