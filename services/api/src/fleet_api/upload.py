"""Receiving a library upload: a multipart body streamed into the object store.

The body is parsed as it arrives (python-multipart's push parser), and the file part's
bytes go to a `ChunkUpload` a chunk at a time, so the gateway holds at most one HTTP
chunk and one store chunk of a file of any size. Text parts (`name`, `tags`,
`sha256`) are small and kept. Anything wrong (over the size limit, truncated body,
digest other than announced, bad name) aborts the upload, whose chunks are purged:
nothing half stored is ever named, so nothing half stored is ever listed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import structlog
from nats.js import JetStreamContext
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from fleet_api.errors import ApiError
from fleet_contracts.codes import ErrorCode
from fleet_contracts.materials import SHA256_HEX, check_name, check_tags, split_tags
from fleet_runtime.objects import ChunkUpload

log = structlog.get_logger(__name__)

FILE_FIELD = "file"
TEXT_FIELDS = ("name", "tags", "sha256")
MAX_TEXT_BYTES = 4096
MULTIPART_OVERHEAD = 64 * 1024
"""Room for boundaries and the text parts above the file size limit."""


def invalid(where: str, problem: str) -> ApiError:
    return ApiError(ErrorCode.INVALID_PARAMETERS, f"{where}: {problem}")


@dataclass
class Upload:
    """What a finished upload said about its file, with the chunks still unnamed."""

    chunks: ChunkUpload
    name: str
    tags: list[str]
    content_type: str
    fields: dict[str, str] = field(default_factory=dict)


@dataclass
class _Part:
    name: str = ""
    filename: str | None = None
    content_type: str = "application/octet-stream"
    data: bytearray = field(default_factory=bytearray)


class _Reader:
    """Callbacks of the push parser; file bytes wait in `pending` for the next await."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.fields: dict[str, str] = {}
        self.part = _Part()
        self.header_field = bytearray()
        self.header_value = bytearray()
        self.headers: dict[str, bytes] = {}
        self.file: _Part | None = None
        self.in_file = False
        self.pending: list[bytes] = []
        self.file_bytes = 0
        self.ended = False
        self.problem: ApiError | None = None

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self.on_part_begin,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_end": self.on_end,
        }

    def on_part_begin(self) -> None:
        self.part = _Part()
        self.headers = {}

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.header_field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.header_value += data[start:end]

    def on_header_end(self) -> None:
        self.headers[self.header_field.decode("latin-1").lower()] = bytes(self.header_value)
        self.header_field.clear()
        self.header_value.clear()

    def on_headers_finished(self) -> None:
        _, params = parse_options_header(self.headers.get("content-disposition", b""))
        self.part.name = params.get(b"name", b"").decode("utf-8", "replace")
        raw_filename = params.get(b"filename")
        self.part.filename = None if raw_filename is None else raw_filename.decode("utf-8")
        ctype = self.headers.get("content-type")
        if ctype:
            self.part.content_type = ctype.decode("latin-1").split(";")[0].strip()
        if self.part.name == FILE_FIELD:
            if self.file is not None:
                self._fail(invalid(FILE_FIELD, "send one file per upload"))
            self.file = self.part
            self.in_file = True
        elif self.part.name not in TEXT_FIELDS:
            self._fail(
                invalid(
                    self.part.name or "body",
                    f"unknown form field (expected {FILE_FIELD}, {', '.join(TEXT_FIELDS)})",
                )
            )

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self.problem is not None:
            return
        if self.in_file:
            self.file_bytes += end - start
            if self.file_bytes > self.max_bytes:
                self._fail(
                    invalid(
                        FILE_FIELD,
                        f"larger than the upload limit of {self.max_bytes} bytes "
                        "(FLEET_API_MATERIAL_MAX_BYTES)",
                    )
                )
                return
            self.pending.append(bytes(data[start:end]))
            return
        self.part.data += data[start:end]
        if len(self.part.data) > MAX_TEXT_BYTES:
            self._fail(invalid(self.part.name, f"longer than {MAX_TEXT_BYTES} bytes"))

    def on_part_end(self) -> None:
        if not self.in_file and self.part.name in TEXT_FIELDS:
            self.fields[self.part.name] = self.part.data.decode("utf-8", "replace").strip()
        self.in_file = False

    def on_end(self) -> None:
        self.ended = True

    def _fail(self, problem: ApiError) -> None:
        if self.problem is None:
            self.problem = problem


def boundary_of(request: Request) -> bytes:
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if ctype != b"multipart/form-data" or not boundary:
        raise invalid(
            "body",
            f"send the file as multipart/form-data with a '{FILE_FIELD}' part "
            "(and optional name, tags, sha256 fields)",
        )
    return boundary


def check_length(request: Request, max_bytes: int) -> None:
    """Refuse a body announced too big before reading any of it."""
    announced = request.headers.get("content-length")
    if announced and announced.isdigit() and int(announced) > max_bytes + MULTIPART_OVERHEAD:
        raise invalid(
            FILE_FIELD,
            f"the body of {int(announced)} bytes is larger than the upload limit of "
            f"{max_bytes} bytes (FLEET_API_MATERIAL_MAX_BYTES)",
        )


def _name_and_tags(reader: _Reader) -> tuple[str, list[str]]:
    assert reader.file is not None
    raw_name = reader.fields.get("name") or reader.file.filename or ""
    try:
        name = check_name(raw_name)
    except ValueError as exc:
        raise invalid("name", str(exc)) from exc
    try:
        tags = check_tags(split_tags(reader.fields.get("tags", "")))
    except ValueError as exc:
        raise invalid("tags", str(exc)) from exc
    return name, tags


async def receive(request: Request, js: JetStreamContext, bucket: str, max_bytes: int) -> Upload:
    """Stream the request's file into `bucket` as unnamed chunks; ApiError if refused.

    The caller names the chunks (`upload.chunks.commit()`) once the library accepts
    the item, or aborts them.
    """
    boundary = boundary_of(request)
    check_length(request, max_bytes)
    reader = _Reader(max_bytes)
    parser = MultipartParser(boundary, reader.callbacks())  # type: ignore[arg-type]
    chunks = ChunkUpload(js, bucket)
    checked_early = False
    try:
        try:
            async for data in request.stream():
                parser.write(data)
                if reader.problem is not None:
                    raise reader.problem
                if reader.file is not None and not checked_early and reader.in_file:
                    # Refuse a bad file name before storing a byte of the file.
                    checked_early = True
                    if reader.fields.get("name") or reader.file.filename:
                        _name_and_tags(reader)
                if reader.pending:
                    await chunks.write(b"".join(reader.pending))
                    reader.pending.clear()
                if reader.ended:
                    break
        except MultipartParseError as exc:
            raise invalid("body", f"malformed multipart/form-data ({exc})") from exc
        except ClientDisconnect as exc:
            log.info("upload.disconnected", received=reader.file_bytes)
            raise invalid(
                FILE_FIELD, f"the upload was cut off after {reader.file_bytes} bytes"
            ) from exc
        if reader.file is None:
            raise invalid(FILE_FIELD, f"required: a multipart part named '{FILE_FIELD}'")
        if not reader.ended:
            raise invalid(
                FILE_FIELD,
                f"the upload is truncated: the body ended after {reader.file_bytes} bytes "
                "without its closing boundary",
            )
        if reader.file_bytes == 0:
            raise invalid(FILE_FIELD, "is empty")
        name, tags = _name_and_tags(reader)
        expected = reader.fields.get("sha256", "").lower()
        if expected:
            if not SHA256_HEX.match(expected):
                raise invalid("sha256", "must be 64 hexadecimal digits")
            if expected != chunks.sha256:
                raise invalid(
                    "sha256",
                    f"the bytes received hash to {chunks.sha256}, not {expected}: "
                    "the file changed or was damaged on the way; nothing was stored",
                )
    except BaseException:
        await chunks.abort()
        raise
    return Upload(
        chunks=chunks,
        name=name,
        tags=tags,
        content_type=reader.file.content_type,
        fields=reader.fields,
    )
