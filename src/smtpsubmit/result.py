"""What a submission returns, and what its progress callback receives."""

from __future__ import annotations

from dataclasses import dataclass, field

from smtpsubmit.reply import Reply

__all__ = ["Progress", "SubmitResult"]


_OK = Reply(250)  # the default final reply, one object for every result (Reply is frozen)


@dataclass(frozen=True, slots=True)
class SubmitResult:
    """The outcome of one message: who accepted it and the server's final answer.

    ``refused`` lists recipients the server turned down while the message
    went to the ``accepted`` ones (partial acceptance is not an error).
    ``unknown`` lists recipients of a follow-up transaction (after a 452
    deferral) whose answer to the end of the data was lost: they may have got
    the message. They are also in ``refused``, with a synthetic 451 reply, so
    that code which retries ``refused`` keeps at-least-once delivery.

    Slotted: a stream of results (``send_many``, ``Pool.send_iter``) keeps no
    per-instance ``__dict__``.
    """

    message_id: str | None
    sender: str
    accepted: list[str]
    refused: dict[str, Reply] = field(default_factory=dict)
    reply: Reply = _OK
    size: int = 0
    unknown: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        """A JSON-friendly form (the CLI's ``--json``)."""
        return {
            "message_id": self.message_id,
            "sender": self.sender,
            "accepted": list(self.accepted),
            "refused": {a: _reply_dict(r) for a, r in self.refused.items()},
            "reply": _reply_dict(self.reply),
            "size": self.size,
            "unknown": list(self.unknown),
        }


def _reply_dict(reply: Reply) -> dict[str, object]:
    return {"code": reply.code, "enhanced": reply.enhanced, "text": reply.text}


@dataclass(frozen=True)
class Progress:
    """Transfer status, reported as the message data goes out.

    ``stage`` is ``"data"`` while bytes flow and ``"done"`` once the server
    has answered the end of the data.
    """

    stage: str
    bytes_sent: int
    bytes_total: int
    elapsed: float = 0.0

    @property
    def rate(self) -> float:
        """Octets per second so far."""
        return self.bytes_sent / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def fraction(self) -> float:
        return min(1.0, self.bytes_sent / self.bytes_total) if self.bytes_total else 1.0
