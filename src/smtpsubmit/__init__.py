"""smtpsubmit: compose an email message and submit it to an SMTP server in one call.

from smtpsubmit import Message, Server, Option, submit_message
submit_message(Message(sender="me@example.org", to="you@example.org", text="Hi"),
               Server("smtp.example.org", "me", "secret", options=Option.SECURE))
"""

from smtpsubmit.client import AsyncClient, Client
from smtpsubmit.direct import DirectResult, DomainResult, adeliver_direct, deliver_direct
from smtpsubmit.dkim import DkimSigner
from smtpsubmit.envelope import DSN, Envelope
from smtpsubmit.errors import (
    AuthError,
    ClientBusyError,
    ConnectError,
    DataRefused,
    DeliveryStatusUnknown,
    ExtensionUnavailable,
    MessageError,
    MessageTooLarge,
    PoolTimeout,
    ProtocolError,
    RecipientsRefused,
    SenderRefused,
    ServerDisconnected,
    SmtpError,
    SmtpTimeout,
    TlsError,
)
from smtpsubmit.message import Attachment, Encoding, Message
from smtpsubmit.outbox import AsyncOutbox, Outbox, RetryPolicy
from smtpsubmit.pool import AsyncPool, Pool
from smtpsubmit.protocol import Capabilities
from smtpsubmit.ratelimit import RateLimit
from smtpsubmit.reply import Reply
from smtpsubmit.result import Progress, SubmitResult
from smtpsubmit.server import Option, Server
from smtpsubmit.submit import asubmit_message, submit_message
from smtpsubmit.transports import (
    AsyncFileTransport,
    AsyncMemoryTransport,
    AsyncTransport,
    FileTransport,
    MemoryTransport,
    SentMessage,
    Transport,
)

__version__ = "0.1.0"

__all__ = [
    "DSN",
    "AsyncClient",
    "AsyncFileTransport",
    "AsyncMemoryTransport",
    "AsyncOutbox",
    "AsyncPool",
    "AsyncTransport",
    "Attachment",
    "AuthError",
    "Capabilities",
    "Client",
    "ClientBusyError",
    "ConnectError",
    "DataRefused",
    "DeliveryStatusUnknown",
    "DirectResult",
    "DkimSigner",
    "DomainResult",
    "Encoding",
    "Envelope",
    "ExtensionUnavailable",
    "FileTransport",
    "MemoryTransport",
    "Message",
    "MessageError",
    "MessageTooLarge",
    "Option",
    "Outbox",
    "Pool",
    "PoolTimeout",
    "Progress",
    "ProtocolError",
    "RateLimit",
    "RecipientsRefused",
    "Reply",
    "RetryPolicy",
    "SenderRefused",
    "SentMessage",
    "Server",
    "ServerDisconnected",
    "SmtpError",
    "SmtpTimeout",
    "SubmitResult",
    "TlsError",
    "Transport",
    "__version__",
    "adeliver_direct",
    "asubmit_message",
    "deliver_direct",
    "submit_message",
]
