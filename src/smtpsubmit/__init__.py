"""smtpsubmit: compose an email message and submit it to an SMTP server in one call.

from smtpsubmit import Message, Server, Option, submit_message
submit_message(Message(sender="me@example.org", to="you@example.org", text="Hi"),
               Server("smtp.example.org", "me", "secret", options=Option.SECURE))
"""

from smtpsubmit.client import AsyncClient, Client
from smtpsubmit.envelope import DSN, Envelope
from smtpsubmit.errors import (
    AuthError,
    ConnectError,
    DataRefused,
    DeliveryStatusUnknown,
    ExtensionUnavailable,
    MessageError,
    MessageTooLarge,
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
    "AsyncTransport",
    "Attachment",
    "AuthError",
    "Client",
    "ConnectError",
    "DataRefused",
    "DeliveryStatusUnknown",
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
    "Progress",
    "ProtocolError",
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
    "asubmit_message",
    "submit_message",
]
