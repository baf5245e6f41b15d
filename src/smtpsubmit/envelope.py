"""The envelope (who the message is from and to, as the server sees it), kept
apart from the message itself — what lets a later outbox or pool send the
same bytes to a subset of recipients, and what ``submit_message`` derives from
a composed :class:`~smtpsubmit.message.Message` or takes from the caller for a
ready one.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import idna
from email_validator import EmailNotValidError, ValidatedEmail, validate_email

from smtpsubmit.errors import MessageError
from smtpsubmit.protocol import check_argument

__all__ = ["DSN", "Envelope", "check_envelope_address"]

_NOTIFY = frozenset({"SUCCESS", "FAILURE", "DELAY", "NEVER"})


@dataclass(frozen=True)
class DSN:
    """Delivery status notifications wanted for this message (RFC 3461).

    ``required=False`` sends the message without DSN when the server does not
    offer the extension instead of raising ``ExtensionUnavailable``.
    """

    notify: Sequence[str] = ("FAILURE",)
    ret: str | None = None
    envid: str | None = None
    required: bool = True

    def __post_init__(self) -> None:
        notify = (self.notify,) if isinstance(self.notify, str) else tuple(self.notify)
        notify = tuple(n.strip().upper() for n in notify)
        if not notify or not set(notify) <= _NOTIFY:
            raise ValueError(f"DSN notify must be SUCCESS, FAILURE, DELAY or NEVER, not {notify}")
        if "NEVER" in notify and len(notify) > 1:
            raise ValueError("DSN notify NEVER cannot be combined with other values")
        object.__setattr__(self, "notify", notify)
        if self.ret is not None:
            ret = self.ret.strip().upper()
            if ret not in ("FULL", "HDRS"):
                raise ValueError(f"DSN ret must be 'FULL' or 'HDRS', not {self.ret!r}")
            object.__setattr__(self, "ret", ret)
        if self.envid is not None:
            check_argument(self.envid, "DSN envid")
            if len(self.envid) > 100 or not self.envid.isascii():
                raise ValueError("DSN envid must be printable ASCII of at most 100 characters")


@dataclass(frozen=True)
class Envelope:
    """MAIL FROM / RCPT TO addresses and what the transfer needs from the server."""

    sender: str
    recipients: list[str]
    size: int = 0
    smtputf8: bool = False
    eight_bit: bool = False
    dsn: DSN | None = None
    require_tls: bool = False
    message_id: str | None = None
    extra_mail_params: tuple[str, ...] = field(default=())


def validate_addr_spec(address: str) -> ValidatedEmail:
    """Check an addr-spec with email-validator, never by hand.

    Special-use domains (``localhost``, ``.local``, ``.test``, ...) are
    rejected by email-validator because they are not globally deliverable, but
    a submission server is exactly where ``root@localhost`` is meant to go: for
    those, the local part is checked against a stand-in domain and the domain
    must still be a valid host name.
    """
    options: dict[str, Any] = {
        "check_deliverability": False,
        "allow_smtputf8": True,
        "allow_quoted_local": False,  # legal, but mishandled widely: refuse, never guess
        "allow_domain_literal": True,
        "globally_deliverable": False,
        "test_environment": True,
    }
    try:
        return validate_email(address, **options)
    except EmailNotValidError as exc:
        local, _, domain = address.rpartition("@")
        if "special-use" not in str(exc) or not local:
            raise MessageError(f"invalid address {address!r}: {exc}") from None
    try:
        checked = validate_email(f"{local}@example.net", **options)
        ascii_domain = idna.encode(domain.rstrip("."), uts46=True).decode("ascii")
    except (EmailNotValidError, idna.IDNAError, UnicodeError) as exc:
        raise MessageError(f"invalid address {address!r}: {exc}") from None
    checked.domain = domain.lower()
    checked.ascii_domain = ascii_domain
    checked.normalized = f"{checked.local_part}@{checked.domain}"
    if checked.ascii_email is not None:
        checked.ascii_email = f"{checked.local_part}@{ascii_domain}"
    return checked


def check_envelope_address(address: str, *, sender: bool = False) -> tuple[str, bool]:
    """Validate one envelope address; return (address for the wire, needs SMTPUTF8).

    An IDN domain is turned into its A-label; a non-ASCII local part is kept
    and reported, since only SMTPUTF8 can carry it. The null sender ``""``
    is allowed for MAIL FROM only.
    """
    if not isinstance(address, str):
        raise MessageError(f"an envelope address must be a string, not {type(address).__name__}")
    return _check_address(address, sender)


@functools.lru_cache(maxsize=4096)  # bulk senders repeat addresses; the answer is immutable
def _check_address(address: str, sender: bool) -> tuple[str, bool]:
    try:
        check_argument(address, "envelope address")
    except ValueError as exc:
        raise MessageError(str(exc)) from None
    address = address.strip()
    if address.startswith("<") and address.endswith(">"):
        address = address[1:-1].strip()
    if address == "" and sender:
        return "", False
    checked = validate_addr_spec(address)
    local = checked.local_part
    if checked.ascii_email:
        return checked.ascii_email, False
    return f"{local}@{checked.domain}", True
