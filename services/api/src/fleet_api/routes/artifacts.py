"""Failure evidence: what the agent kept when a task's step failed.

Each failed run leaves up to two objects in the `artifacts` bucket, named
`task-<id>/<dispatch id>/screenshot.png` and `.../hierarchy.xml`. The task's own
history says which runs failed, so listing costs a lookup per failed run, never a scan
of the bucket; objects older than the bucket's retention are gone and not listed.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request
from fastapi.responses import StreamingResponse

from fleet_api.docs import errors
from fleet_api.errors import ApiError
from fleet_api.routes.materials import object_response
from fleet_api.routes.params import ApiCaller, CorrelationId, TaskId
from fleet_api.scheduler import ask
from fleet_api.state import gateway
from fleet_contracts.codes import ErrorCode
from fleet_contracts.envelope import Envelope
from fleet_contracts.materials import ARTIFACT_FILES, ARTIFACTS_BUCKET, ArtifactView, artifact_name
from fleet_contracts.queries import TaskEvents
from fleet_runtime.objects import live_info, sha256_hex

router = APIRouter(prefix="/task", tags=["tasks"])

DispatchId = Annotated[str, Path(pattern=r"^[0-9a-f]{1,64}$", description="the failed run's id")]
ArtifactFile = Annotated[
    str, Path(pattern=r"^(screenshot\.png|hierarchy\.xml)$", description="the file")
]


@router.get(
    "/{task_id}/artifacts",
    summary="Screenshots and UI dumps the agent kept when the task's steps failed",
    response_model=Envelope[list[ArtifactView]],
    responses=errors(404),
)
async def list_artifacts(
    request: Request, task_id: TaskId, caller: ApiCaller, cid: CorrelationId
) -> Envelope[list[ArtifactView]]:
    gw = gateway(request)
    history = await ask(gw, TaskEvents(task_id=task_id, correlation_id=cid))
    failed_runs = list(
        dict.fromkeys(
            str(e["data"].get("dispatch_id") or "")
            for e in history or []
            if e["type"] == "task.failed"
        )
    )
    found: list[ArtifactView] = []
    base = str(request.url_for("list_artifacts", task_id=task_id))
    for dispatch_id in filter(None, failed_runs):
        for file, content_type in ARTIFACT_FILES.items():
            info = await live_info(
                gw.js, ARTIFACTS_BUCKET, artifact_name(task_id, dispatch_id, file)
            )
            if info is None:
                continue
            found.append(
                ArtifactView(
                    name=info.name,
                    dispatch_id=dispatch_id,
                    file=file,
                    content_type=content_type,
                    size=int(info.size or 0),
                    sha256=sha256_hex(info),
                    url=f"{base}/{dispatch_id}/{file}",
                )
            )
    return Envelope(data=found)


@router.get(
    "/{task_id}/artifacts/{dispatch_id}/{file}",
    summary="One artifact's bytes",
    responses={200: {"content": {"image/png": {}, "application/xml": {}}}, **errors(404)},
    response_class=StreamingResponse,
)
async def get_artifact(
    request: Request,
    task_id: TaskId,
    dispatch_id: DispatchId,
    file: ArtifactFile,
    caller: ApiCaller,
) -> StreamingResponse:
    gw = gateway(request)
    name = artifact_name(task_id, dispatch_id, file)
    info = await live_info(gw.js, ARTIFACTS_BUCKET, name)
    if info is None:
        raise ApiError(
            ErrorCode.NOT_FOUND,
            f"no artifact {name} (never kept, or older than the retention of the artifacts "
            "bucket, FLEET_ARTIFACT_RETENTION_HOURS)",
        )
    etag = sha256_hex(info) or info.nuid
    return object_response(gw, info, ARTIFACT_FILES[file], f"task-{task_id}-{file}", etag)
