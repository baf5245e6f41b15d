"""Direct delivery to the recipients' mail exchangers, with MTA-STS and DANE (contract §13).

:func:`deliver_direct` needs no relay: it finds each recipient domain's MX
hosts in DNS and hands the message to them, applying the domain's MTA-STS
policy (RFC 8461) and its MX hosts' DANE TLSA records (RFC 7672). It sits
above the drivers: every SMTP session is a :class:`~smtpsubmit.Client`.
"""

from smtpsubmit.direct.deliver import adeliver_direct, deliver_direct
from smtpsubmit.direct.mta_sts import PolicyCache
from smtpsubmit.direct.result import DirectResult, DomainResult, MxAttempt, TlsFailure

__all__ = [
    "DirectResult",
    "DomainResult",
    "MxAttempt",
    "PolicyCache",
    "TlsFailure",
    "adeliver_direct",
    "deliver_direct",
]
