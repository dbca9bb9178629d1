"""The material library: upload, list, get, download, re-tag and delete items.

Bytes go to the `materials` object store bucket named by their SHA-256 (uploading
bytes already there is a duplicate: the existing item answers, with the new tags merged
in); what an item is called and tagged is a command to the scheduler, recorded as
events like everything else. A post names items in `material_list` as `library:<id>`
or picks them with `materials_tags`.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Annotated, Any
from urllib.parse import quote

import structlog
from fastapi import APIRouter, Body, Path, Query, Request
from fastapi.responses import StreamingResponse
from nats.js.api import ObjectInfo

from fleet_api.docs import errors
from fleet_api.errors import ApiError
from fleet_api.routes.params import MAX_ID, ApiCaller, CorrelationId
from fleet_api.scheduler import ask, run_command
from fleet_api.state import Gateway, gateway
from fleet_api.upload import invalid, receive
from fleet_contracts.codes import ErrorCode
from fleet_contracts.commands import AddMaterial, DeleteMaterial, TagMaterial
from fleet_contracts.envelope import Envelope
from fleet_contracts.materials import (
    MATERIALS_BUCKET,
    SHA256_HEX,
    TAG,
    MaterialPage,
    MaterialTagsRequest,
    MaterialUploaded,
    MaterialView,
)
from fleet_contracts.queries import GetMaterial, ListMaterials
from fleet_runtime.objects import delete, live_info, read_chunks

log = structlog.get_logger(__name__)

router = APIRouter(prefix="/material", tags=["materials"])

MaterialRef = Annotated[
    str,
    Path(
        max_length=64,
        description="the item's id, or the SHA-256 of its bytes (64 hex digits)",
        examples=["12"],
    ),
]

UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "name": {
                            "type": "string",
                            "description": "file name to keep (default: the upload's)",
                        },
                        "tags": {"type": "string", "description": "comma-separated tags"},
                        "sha256": {
                            "type": "string",
                            "description": "the digest you expect; a mismatch stores nothing",
                        },
                    },
                }
            }
        },
    }
}


def _lookup(ref: str) -> GetMaterial:
    if re.fullmatch(r"[0-9]{1,19}", ref) and 1 <= int(ref) <= MAX_ID:
        return GetMaterial(material_id=int(ref))
    if SHA256_HEX.match(ref.lower()):
        return GetMaterial(sha256=ref.lower())
    raise invalid("material", f"{ref!r} is neither an item id nor a SHA-256 (64 hex digits)")


async def _item(gw: Gateway, ref: str, cid: str) -> MaterialView:
    query = _lookup(ref).model_copy(update={"correlation_id": cid})
    return MaterialView.model_validate(await ask(gw, query))


@router.post(
    "",
    summary="Upload a video or image to the library (multipart; streamed, deduplicated)",
    response_model=Envelope[MaterialUploaded],
    responses=errors(),
    openapi_extra=UPLOAD_BODY,
)
async def upload_material(
    request: Request, caller: ApiCaller, cid: CorrelationId
) -> Envelope[MaterialUploaded]:
    gw = gateway(request)
    upload = await receive(request, gw.js, MATERIALS_BUCKET, gw.settings.api_material_max_bytes)
    try:
        stored = await upload.chunks.commit()
    except BaseException:
        await upload.chunks.abort()
        raise
    log.info(
        "material.stored",
        sha256=stored.sha256,
        size=stored.size,
        duplicate_bytes=stored.duplicate,
        name=upload.name,
    )
    command = AddMaterial(
        sha256=stored.sha256,
        size=stored.size,
        name=upload.name,
        content_type=upload.content_type,
        tags=upload.tags,
        actor=caller.actor,
        correlation_id=cid,
    )
    try:
        data = await run_command(gw, command)
    except ApiError as exc:
        if not stored.duplicate and exc.status < 500:
            # Refused for good: the bytes stored for it would be named by no item.
            await delete(gw.js, MATERIALS_BUCKET, stored.sha256)
        raise
    return Envelope(data=MaterialUploaded.model_validate(data))


@router.get(
    "",
    summary="List library items, newest first, filtered by tag or kind, paged",
    response_model=Envelope[MaterialPage],
    responses=errors(),
)
async def list_materials(
    request: Request,
    caller: ApiCaller,
    cid: CorrelationId,
    tag: Annotated[str | None, Query(max_length=64, description="items carrying this tag")] = None,
    kind: Annotated[str | None, Query(pattern="^(video|image)$", description="video or image")] = (
        None
    ),
    page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
    page_size: Annotated[int, Query(ge=1, le=100)] = 20,
) -> Envelope[MaterialPage]:
    if tag is not None and not TAG.match(tag):
        raise invalid("tag", f"{tag!r} is not a tag (letters, digits, '_' or '-')")
    query = ListMaterials(tag=tag, kind=kind, page=page, page_size=page_size, correlation_id=cid)
    return Envelope(data=MaterialPage.model_validate(await ask(gateway(request), query)))


@router.get(
    "/{material}",
    summary="One library item's metadata",
    response_model=Envelope[MaterialView],
    responses=errors(404),
)
async def get_material(
    request: Request, material: MaterialRef, caller: ApiCaller, cid: CorrelationId
) -> Envelope[MaterialView]:
    return Envelope(data=await _item(gateway(request), material, cid))


async def _stream(gw: Gateway, info: ObjectInfo) -> AsyncIterator[bytes]:
    async for chunk in read_chunks(gw.js, info):
        yield chunk


def object_response(
    gw: Gateway, info: ObjectInfo, content_type: str, filename: str, etag: str
) -> StreamingResponse:
    return StreamingResponse(
        _stream(gw, info),
        media_type=content_type,
        headers={
            "Content-Length": str(info.size or 0),
            "ETag": f'"{etag}"',
            "Content-Disposition": f"attachment; filename*=UTF-8''{quote(filename)}",
        },
    )


@router.get(
    "/{material}/content",
    summary="Download an item's bytes (streamed; ETag is its SHA-256)",
    responses={200: {"content": {"application/octet-stream": {}}}, **errors(404)},
    response_class=StreamingResponse,
)
async def material_content(
    request: Request, material: MaterialRef, caller: ApiCaller, cid: CorrelationId
) -> StreamingResponse:
    gw = gateway(request)
    item = await _item(gw, material, cid)
    info = await live_info(gw.js, MATERIALS_BUCKET, item.sha256)
    if info is None:
        raise ApiError(
            ErrorCode.NOT_FOUND,
            f"material {item.id}: its bytes ({item.sha256}) are missing from the store",
        )
    return object_response(gw, info, item.content_type, item.name, item.sha256)


@router.patch(
    "/{material}",
    summary="Replace an item's tags",
    response_model=Envelope[MaterialView],
    responses=errors(404),
)
async def tag_material(
    request: Request,
    material_id: Annotated[int, Path(alias="material", ge=1, le=MAX_ID)],
    body: Annotated[MaterialTagsRequest, Body(examples=[{"tags": ["cats", "summer"]}])],
    caller: ApiCaller,
    cid: CorrelationId,
) -> Envelope[MaterialView]:
    command = TagMaterial(
        material_id=material_id, tags=body.tags, actor=caller.actor, correlation_id=cid
    )
    data = await run_command(gateway(request), command)
    return Envelope(data=MaterialView.model_validate(data))


@router.delete(
    "/{material}",
    summary="Delete an item and its bytes; tasks that still need it fail saying so",
    response_model=Envelope[dict[str, Any]],
    responses=errors(404),
)
async def delete_material(
    request: Request,
    material_id: Annotated[int, Path(alias="material", ge=1, le=MAX_ID)],
    caller: ApiCaller,
    cid: CorrelationId,
) -> Envelope[dict[str, Any]]:
    gw = gateway(request)
    command = DeleteMaterial(material_id=material_id, actor=caller.actor, correlation_id=cid)
    data = await run_command(gw, command)
    sha256 = str(data["sha256"])
    try:
        await ask(gw, GetMaterial(sha256=sha256, correlation_id=cid))
    except ApiError as exc:
        if exc.code != ErrorCode.NOT_FOUND:
            raise
        await delete(gw.js, MATERIALS_BUCKET, sha256)
    else:
        # The same bytes were uploaded again meanwhile: the new item keeps them.
        log.info("material.bytes_kept", sha256=sha256)
    return Envelope(data=data)
