"""Attachments: :class:`Attachment` and how one becomes a base64 MIME part.

A file attachment is checked when it is made (it must be a readable regular
file) and streamed when the message is rendered: its size comes from one
``os.stat`` per render, so the exact message size is known before a byte
of it is read.
"""

from __future__ import annotations

import mimetypes
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, cast

from smtpsubmit import mime
from smtpsubmit.errors import MessageError

__all__ = ["Attachment"]

_COMPRESSED_TYPES = {
    "gzip": "application/gzip",
    "bzip2": "application/x-bzip2",
    "xz": "application/x-xz",
}


def _check_content_type(value: str) -> None:
    main, slash, sub = value.partition("/")
    tspecials = set('()<>@,;:\\"/[]?= ')
    for token in (main, sub):
        if not slash or not token or not token.isascii() or not token.isprintable():
            raise MessageError(f"attachment content type {value!r} is not 'type/subtype'")
        if tspecials & set(token):
            raise MessageError(f"attachment content type {value!r} is not 'type/subtype'")
    if main.lower() in ("multipart", "message"):
        raise MessageError(f"attachment content type {value!r}: use application/octet-stream")


def _guess_type(filename: str | None) -> str:
    if not filename:
        return "application/octet-stream"
    guessed, compression = mimetypes.guess_type(filename, strict=False)
    if compression:
        return _COMPRESSED_TYPES.get(compression, "application/octet-stream")
    if not guessed or guessed.split("/")[0] in ("multipart", "message"):
        return "application/octet-stream"
    return guessed


@dataclass(frozen=True)
class Attachment:
    """A file (``path``) or bytes (``data``) to attach: exactly one of the two.

    ``filename`` defaults to the path's base name; ``content_type`` is
    guessed from the file name. An ``inline`` attachment with a
    ``content_id`` is grouped with the HTML body in ``multipart/related`` so
    the HTML can show it with ``src="cid:..."``. A missing or unreadable file
    is a :class:`MessageError` here, not when sending.
    """

    path: str | os.PathLike[str] | None = None
    data: bytes | None = None
    filename: str | None = None
    content_type: str | None = None
    inline: bool = False
    content_id: str | None = None
    _file: str | None = field(init=False, default=None, repr=False, compare=False)
    _name: str | None = field(init=False, default=None, repr=False, compare=False)
    _type: str = field(init=False, default="", repr=False, compare=False)
    _cid: str | None = field(init=False, default=None, repr=False, compare=False)
    _headers: tuple[bytes, ...] | None = field(init=False, default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if (self.path is None) == (self.data is None):
            raise MessageError("Attachment needs exactly one of 'path' or 'data'")
        name = self.filename
        if self.data is not None:
            if not isinstance(self.data, bytes | bytearray | memoryview):
                raise MessageError("Attachment 'data' must be bytes")
            object.__setattr__(self, "data", bytes(self.data))
        else:
            path = self._check_file()
            object.__setattr__(self, "_file", path)
            name = name if name is not None else os.path.basename(path)
        if name is not None and not isinstance(name, str):
            raise MessageError("Attachment 'filename' must be a string")
        name = name.strip() if name else None  # receivers strip it anyway
        if name:
            mime.check_name(name, "attachment file name")
        object.__setattr__(self, "_name", name or None)
        content_type = self.content_type or _guess_type(name)
        if not isinstance(content_type, str):
            raise MessageError("Attachment 'content_type' must be a string")
        _check_content_type(content_type)
        object.__setattr__(self, "_type", content_type.lower())
        object.__setattr__(self, "_cid", self._check_cid())

    def _check_file(self) -> str:
        try:
            path = os.path.abspath(os.fspath(cast(Any, self.path)))
        except TypeError as exc:
            raise MessageError(f"attachment path {self.path!r} is not a path") from exc
        if not isinstance(path, str):
            raise MessageError(f"attachment path {self.path!r} must be a str path")
        try:  # stat first: opening a FIFO to check it would block
            info = os.stat(path)
            if stat.S_ISREG(info.st_mode):
                with open(path, "rb"):
                    pass
        except OSError as exc:
            raise MessageError(f"attachment {path!r} cannot be read: {exc.strerror}") from exc
        if not stat.S_ISREG(info.st_mode):
            raise MessageError(f"attachment {path!r} is not a regular file")
        return path

    def _check_cid(self) -> str | None:
        if self.content_id is None:
            return None
        cid = self.content_id
        if not isinstance(cid, str):
            raise MessageError("Attachment 'content_id' must be a string")
        if cid.startswith("<") and cid.endswith(">"):
            cid = cid[1:-1]
        bad = set(' \t<>"()[]\\,;:')
        if not cid or not cid.isascii() or not cid.isprintable() or bad & set(cid):
            raise MessageError(f"attachment content_id {self.content_id!r} is not a valid id")
        return cid

    @property
    def grouped_with_html(self) -> bool:
        """Has a Content-ID, so an inline one goes in ``multipart/related`` with the HTML."""
        return self._cid is not None

    def part_headers(self) -> tuple[bytes, ...]:
        """The part's header fields: pure, so rendered once per attachment."""
        if self._headers is None:
            object.__setattr__(self, "_headers", self._render_headers())
        return cast(tuple[bytes, ...], self._headers)

    def _render_headers(self) -> tuple[bytes, ...]:
        name_params = [("name", self._name)] if self._name else []
        disposition_params = [("filename", self._name)] if self._name else []
        headers = [
            mime.fold("Content-Type", mime.parameter_tokens(self._type, name_params)),
            b"Content-Transfer-Encoding: base64\r\n",
            mime.fold(
                "Content-Disposition",
                mime.parameter_tokens(
                    "inline" if self.inline else "attachment", disposition_params
                ),
            ),
        ]
        if self._cid:
            headers.append(mime.fold("Content-ID", [f"<{self._cid}>"]))
        return tuple(headers)

    def file_size(self) -> int | None:
        """The file's size now (one ``os.stat``), or None for in-memory data."""
        if self._file is None:
            return None
        try:
            return os.stat(self._file).st_size
        except OSError as exc:
            raise MessageError(f"attachment {self._file!r} cannot be read: {exc}") from exc

    def leaf(self, length: int | None) -> mime.Leaf:
        """This attachment as a base64 part; *length* is :meth:`file_size` of this render."""
        if self._file is None:
            body: mime.Segment = mime.Base64Data(cast(bytes, self.data))
        else:
            body = mime.Base64File(self._file, cast(int, length))
        return mime.Leaf(self.part_headers(), (body,))


def parse_attachments(value: object) -> list[Attachment]:
    if isinstance(value, str):
        items: list[object] = [piece.strip() for piece in value.split(";") if piece.strip()]
    elif isinstance(value, Iterable):
        items = list(cast(Iterable[object], value))
    else:
        raise MessageError("attachments: expected a string or a sequence")
    result = []
    for item in items:
        if isinstance(item, Attachment):
            result.append(item)
        elif isinstance(item, str | os.PathLike):
            result.append(Attachment(path=cast("str | os.PathLike[str]", item)))
        else:
            raise MessageError(f"attachments: unexpected {type(item).__name__}")
    return result
