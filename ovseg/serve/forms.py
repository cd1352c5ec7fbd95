"""The ``POST /segment`` form, read under limits: the body within a size and a deadline, then
its parts parsed off the event loop in linear time.

``read_body`` collects the request body (at most ``max_bytes``, all of it within
``timeout_s``: a slow upload is answered 408, not waited for). ``parse_segment_form`` then
splits the ``multipart/form-data`` body with python-multipart's streaming parser, with a
limit for every part: at most ``MAX_PARTS`` parts, each with at most ``MAX_HEADER_COUNT``
headers of ``MAX_HEADER_BYTES``; the fields ``image`` (or ``video``: a file), ``classes`` (at most
``max_classes_bytes``), ``mode`` and ``granularity`` (short words), each at most once; any
other field is refused. Each part's bytes are collected in a list and joined once, so the work is linear in
the body whatever its shape. Every refusal is a ``RequestRejected`` with the HTTP status to
answer and a message naming the field and the limit.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from ovseg.serve.limits import RequestRejected

MAX_PARTS = 8
MAX_HEADER_COUNT = 8
MAX_HEADER_BYTES = 4096
MAX_WORD_BYTES = 32  # mode, granularity
TEXT_FIELDS = ("classes", "mode", "granularity")


@dataclass
class SegmentForm:
    """The fields of one ``POST /segment`` (``/segment-video``): the file's bytes and name
    (None when absent), the ``classes`` text, ``mode`` and ``granularity`` (None when not
    given)."""

    file: bytes | None
    filename: str | None
    classes: str
    mode: str | None
    granularity: str | None


async def read_body(receive, max_bytes: int, timeout_s: float, keep: bool = True) -> bytes:
    """The request body from the ASGI ``receive`` callable.

    ``keep=False`` reads the body and drops it (returns ``b""``): a request refused before
    its body was read (busy) is drained first, so that the client reads the answer instead
    of a connection reset (closing a socket with unread data sends TCP RST).

    Raises:
        RequestRejected: 413 past ``max_bytes``, 408 when the whole body has not arrived
            within ``timeout_s`` seconds, 400 when the client disconnects.
    """
    chunks: list[bytes] = []
    size = 0

    async def collect() -> None:
        nonlocal size
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise RequestRejected(400, "the client disconnected before the body was sent")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > max_bytes:
                raise RequestRejected(
                    413, f"request body larger than this server's limit of {max_bytes} bytes"
                )
            if keep:
                chunks.append(chunk)
            if not message.get("more_body", False):
                return

    try:
        await asyncio.wait_for(collect(), timeout_s)
    except TimeoutError:
        raise RequestRejected(
            408,
            f"the upload took longer than this server's limit of {timeout_s:g} s "
            f"({size} bytes received); send it faster or a smaller image",
        ) from None
    return b"".join(chunks)


def _boundary(content_type: str) -> bytes:
    from python_multipart.multipart import parse_options_header

    kind, params = parse_options_header(content_type or "")
    if kind != b"multipart/form-data":
        raise RequestRejected(
            400,
            f"expected a multipart/form-data body (an 'image' file and a 'classes' field), "
            f"got content type {content_type[:100]!r}",
        )
    boundary = params.get(b"boundary")
    if not boundary or len(boundary) > 200:
        raise RequestRejected(400, "expected a multipart/form-data body: no usable boundary")
    return boundary


class _Part:
    def __init__(self) -> None:
        self.header_field: list[bytes] = []
        self.header_value: list[bytes] = []
        self.disposition = b""
        self.name: str | None = None
        self.is_file = False
        self.filename = ""
        self.data: list[bytes] = []
        self.size = 0


def parse_segment_form(
    body: bytes, content_type: str, max_classes_bytes: int, file_field: str = "image"
) -> SegmentForm:
    """Split a ``multipart/form-data`` body into the ``POST /segment`` fields (linear time);
    ``file_field`` names the upload (``image``, or ``video`` for ``/segment-video``).

    Raises:
        RequestRejected: 400 malformed body, unknown or repeated field, too many parts or
            headers; 413 a ``classes`` field over ``max_classes_bytes``.
    """
    from python_multipart.exceptions import MultipartParseError
    from python_multipart.multipart import MultipartParser, parse_options_header

    parts: list[_Part] = []
    seen: set[str] = set()
    limits = {"classes": max_classes_bytes, "mode": MAX_WORD_BYTES}
    limits["granularity"] = MAX_WORD_BYTES
    fields_taken = (file_field, *TEXT_FIELDS)

    def current() -> _Part:
        return parts[-1]

    def on_part_begin() -> None:
        if len(parts) >= MAX_PARTS:
            raise RequestRejected(400, f"more than {MAX_PARTS} parts in the form")
        parts.append(_Part())

    def on_header_field(data: bytes, start: int, end: int) -> None:
        current().header_field.append(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        current().header_value.append(data[start:end])

    def on_header_end() -> None:
        part = current()
        if b"".join(part.header_field).strip().lower() == b"content-disposition":
            part.disposition = b"".join(part.header_value)
        part.header_field, part.header_value = [], []

    def on_headers_finished() -> None:
        part = current()
        kind, options = parse_options_header(part.disposition)
        name = options.get(b"name")
        if kind != b"form-data" or name is None:
            raise RequestRejected(400, "a form part without Content-Disposition: form-data; name=")
        part.name = name.decode("utf-8", errors="replace")
        part.is_file = b"filename" in options
        part.filename = options.get(b"filename", b"").decode("utf-8", errors="replace")[:200]
        if part.name not in fields_taken:
            raise RequestRejected(
                400,
                f"unknown form field {part.name[:40]!r}; the form takes {file_field!r} (a "
                "file), 'classes' and optionally 'mode' and 'granularity'",
            )
        if part.name in seen:
            raise RequestRejected(400, f"the form field {part.name!r} is given twice")
        seen.add(part.name)

    def on_part_data(data: bytes, start: int, end: int) -> None:
        part = current()
        part.size += end - start
        limit = limits.get(part.name or "")
        if limit is not None and part.size > limit:
            option = " (ovseg serve --max-classes-bytes)" if part.name == "classes" else ""
            raise RequestRejected(
                413,
                f"the form field {part.name!r} is larger than this server's limit of {limit} "
                f"bytes{option}",
            )
        part.data.append(data[start:end])

    parser = MultipartParser(
        _boundary(content_type),
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
        },
        max_header_count=MAX_HEADER_COUNT,
        max_header_size=MAX_HEADER_BYTES,
    )
    try:
        parser.write(body)
        parser.finalize()
    except MultipartParseError as error:
        raise RequestRejected(400, f"malformed multipart/form-data body: {error}") from None
    fields = {part.name: part for part in parts if part.name is not None}
    upload = fields.get(file_field)
    if upload is not None and not upload.is_file:
        raise RequestRejected(400, f"the form field {file_field!r} must be a file upload")

    def text(name: str) -> str | None:
        part = fields.get(name)
        if part is None:
            return None
        try:
            return b"".join(part.data).decode("utf-8")
        except UnicodeDecodeError:
            raise RequestRejected(400, f"the form field {name!r} is not UTF-8 text") from None

    return SegmentForm(
        file=None if upload is None else b"".join(upload.data),
        filename=None if upload is None else upload.filename,
        classes=text("classes") or "",
        mode=text("mode"),
        granularity=text("granularity"),
    )
