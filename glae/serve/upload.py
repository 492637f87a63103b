"""The uploaded file of a ``multipart/form-data`` request, read within the size limit.

The body is counted while it streams in and stops being kept once it passes the limit
(413), so a client cannot make the server buffer or spool an arbitrarily large upload;
only a body within the limit is handed to Starlette's multipart parser.
"""

from __future__ import annotations

from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect, Request
from starlette.types import Message

from .errors import ApiError
from ..imageformats import decodable_formats, image_format

# Room for the multipart boundaries and part headers around a file of the maximum size.
MULTIPART_OVERHEAD = 64 * 1024
# An HTTP client sends its whole body before it reads the answer: closing the connection
# mid-upload shows it a broken pipe, not the 413. So past the limit the rest is read and
# dropped, never stored, for up to this many more bytes (nginx's "lingering close").
LINGER_BYTES = 64 * 1024 * 1024
FIELD = "file"


async def read_image_upload(request: Request, max_bytes: int) -> bytes:
    """The bytes of the ``file`` field, once they are known to start like an image.

    Raises:
        ApiError: 413 over ``max_bytes``; 400 without a ``file`` field, not multipart, or
            when the client disconnects mid-upload; 422 for an empty file; 415 when the
            bytes are no supported image format (whatever the filename says).
    """
    limit = max_bytes + MULTIPART_OVERHEAD
    declared = request.headers.get("content-length", "")
    declared_size = int(declared) if declared.isdigit() else 0
    if declared_size > limit + LINGER_BYTES:
        raise ApiError(413, _too_large(max_bytes))
    too_large = declared_size > limit
    body = bytearray()
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            too_large = too_large or received > limit
            if received > limit + LINGER_BYTES:
                break
            if not too_large:
                body += chunk
    except ClientDisconnect:  # the client gave up (Ctrl-C on a slow upload): no server bug to log
        raise ApiError(400, "the client disconnected before its upload was complete") from None
    if too_large:
        raise ApiError(413, _too_large(max_bytes))
    form = await Request(request.scope, _replay(bytes(body))).form(max_files=1, max_fields=8)
    upload = form.get(FIELD)
    if not isinstance(upload, UploadFile):
        raise ApiError(400, f"send the image as multipart/form-data in a field named {FIELD!r}")
    data = await upload.read()
    await form.close()
    if len(data) > max_bytes:
        raise ApiError(413, _too_large(max_bytes))
    if not data:
        raise ApiError(422, "the uploaded file is empty")
    if image_format(data) is None:
        raise ApiError(415, f"not an image this server reads (supported: {', '.join(decodable_formats())}); the file's bytes decide, not its name")
    return data


def _too_large(max_bytes: int) -> str:
    return f"upload larger than the limit of {max_bytes / 2**20:g} MiB"


def _replay(body: bytes):
    """An ASGI ``receive`` that hands over ``body`` in one message, as if it came from the socket."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive
