"""The server's answer to one command, as a typed value.

Parsing the bytes into a :class:`Reply` happens in :mod:`smtpsubmit.protocol`;
this module holds only the value, so that errors, results and the core can all
refer to it without importing each other.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Reply"]

# RFC 3463: class.subject.detail; the class must agree in kind with the basic code.
_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})(?:\s+|$)")


@dataclass(frozen=True, slots=True)
class Reply:
    """One SMTP reply: the three-digit code, the RFC 3463 enhanced code when
    the server sent one, and the text of every line joined with ``\\n``.

    ``is_temporary`` / ``is_permanent`` follow the basic code only: a server
    that answers ``550 4.2.2`` is permanent (RFC 3463 §2 says the basic code
    wins when they disagree).
    """

    code: int
    text: str = ""
    enhanced: str | None = None

    @classmethod
    def from_lines(cls, code: int, lines: list[str]) -> Reply:
        """Build a reply, peeling the enhanced status code off every line."""
        enhanced: str | None = None
        texts: list[str] = []
        for line in lines:
            match = _ENHANCED.match(line)
            if match:
                enhanced = enhanced or f"{match[1]}.{match[2]}.{match[3]}"
                line = line[match.end() :]
            texts.append(line)
        return cls(code, "\n".join(texts), enhanced)

    @property
    def is_positive(self) -> bool:
        return 200 <= self.code < 400

    @property
    def is_temporary(self) -> bool:
        return 400 <= self.code < 500

    @property
    def is_permanent(self) -> bool:
        return self.code >= 500

    @property
    def lines(self) -> list[str]:
        return self.text.split("\n")

    def __str__(self) -> str:
        head = f"{self.code} {self.enhanced} " if self.enhanced else f"{self.code} "
        return (head + self.text.replace("\n", " / ")).rstrip()
