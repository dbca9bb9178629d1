"""The material library and failure evidence: buckets, names, references and views.

Files live in JetStream Object Store buckets, never in PostgreSQL:
- `materials`: the central library, one object per distinct content, named by the
  lowercase hex SHA-256 of its bytes (content-addressed, so an upload of bytes already
  stored is a duplicate, not a second copy). No age limit.
- `artifacts`: what an agent kept when a step failed (screenshot, UI hierarchy dump),
  named `task-<id>/<dispatch id>/<file>`; the bucket's max age is the retention.

What a library item is called, how it is tagged and whether it was deleted are events
in the scheduler's log (`material-<id>` streams) with a read model, like tasks.

A post names library items in `material_list` as `library:<id>` or
`library:<sha256>`; the scheduler resolves each task's pick once, at create, to the
canonical `library:<sha256><suffix>` and records the items in `task.materials_picked`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from fleet_contracts.scripts.post import IMAGE_SUFFIXES, VIDEO_SUFFIXES, media_suffix

MATERIALS_BUCKET = "materials"
ARTIFACTS_BUCKET = "artifacts"
DEFAULT_ARTIFACT_RETENTION_HOURS = 7 * 24.0

LIBRARY_PREFIX = "library:"
_ID_REF = re.compile(r"^library:([1-9][0-9]{0,17})$")
_SHA_REF = re.compile(r"^library:([0-9a-f]{64})(\.[0-9A-Za-z]{1,8})?$")
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
TAG = re.compile(r"^[\w-]{1,64}$")
MAX_TAGS = 20
MAX_NAME = 200

SCREENSHOT = "screenshot.png"
HIERARCHY = "hierarchy.xml"
ARTIFACT_FILES = {SCREENSHOT: "image/png", HIERARCHY: "application/xml"}


@dataclass(frozen=True)
class LibraryRef:
    """A `library:` entry of `material_list`: by item id or by content digest."""

    material_id: int | None = None
    sha256: str | None = None


def is_library_ref(entry: str) -> bool:
    return entry.startswith(LIBRARY_PREFIX)


def parse_library_ref(entry: str) -> LibraryRef:
    """`library:<id>` or `library:<sha256>[suffix]`; ValueError saying the syntax otherwise."""
    if match := _ID_REF.match(entry):
        return LibraryRef(material_id=int(match.group(1)))
    if match := _SHA_REF.match(entry.lower()):
        return LibraryRef(sha256=match.group(1))
    raise ValueError(
        f"{entry!r} is not a library reference (write library:<id> or "
        "library:<sha256>, 64 lowercase hex digits)"
    )


def canonical_ref(sha256: str, name: str) -> str:
    """What a resolved pick says in a task's config: digest plus the media suffix."""
    return f"{LIBRARY_PREFIX}{sha256}{media_suffix(name)}"


def kind_of(name: str) -> str | None:
    """`video`, `image`, or None for a file the post script cannot publish."""
    suffix = media_suffix(name)
    if suffix in VIDEO_SUFFIXES:
        return "video"
    if suffix in IMAGE_SUFFIXES:
        return "image"
    return None


def check_name(name: str) -> str:
    """The item's file name, or ValueError naming the rule it breaks."""
    name = name.strip()
    if not name:
        raise ValueError("must not be empty")
    if len(name) > MAX_NAME:
        raise ValueError(f"is longer than {MAX_NAME} characters")
    if ".." in name:
        raise ValueError(f"{name!r} must not contain '..'")
    if any(ch in name for ch in "/\\") or any(ord(ch) < 32 for ch in name):
        raise ValueError(f"{name!r} must be a plain file name (no '/', '\\' or control characters)")
    if kind_of(name) is None:
        allowed = ", ".join(sorted(VIDEO_SUFFIXES | IMAGE_SUFFIXES))
        raise ValueError(f"{name!r} is not a video or image file (expected one of {allowed})")
    return name


def check_tags(tags: list[str]) -> list[str]:
    """Tags trimmed, deduplicated in order; ValueError naming the first bad one."""
    cleaned: list[str] = []
    for raw in tags:
        tag = raw.strip()
        if not TAG.match(tag):
            raise ValueError(
                f"{raw!r} is not a tag (1 to 64 letters, digits, '_' or '-', no spaces or commas)"
            )
        if tag not in cleaned:
            cleaned.append(tag)
    if len(cleaned) > MAX_TAGS:
        raise ValueError(f"at most {MAX_TAGS} tags per item")
    return cleaned


def split_tags(text: str) -> list[str]:
    return [part for part in (p.strip() for p in text.split(",")) if part]


def artifact_prefix(task_id: int, dispatch_id: str) -> str:
    return f"task-{task_id}/{dispatch_id}/"


def artifact_name(task_id: int, dispatch_id: str, file: str) -> str:
    return artifact_prefix(task_id, dispatch_id) + file


class MaterialView(BaseModel):
    """A library item as the API shows it."""

    model_config = ConfigDict(extra="ignore")

    id: int
    sha256: str
    name: str
    size: int
    kind: str = Field(description="video or image")
    content_type: str
    tags: list[str]
    ref: str = Field(description="what to put in material_list: library:<id>")
    created_at: datetime
    updated_at: datetime | None = None


class MaterialPage(BaseModel):
    materials: list[MaterialView]
    total: int
    page: int
    page_size: int


class MaterialUploaded(MaterialView):
    duplicate: bool = Field(False, description="true when these bytes were in the library already")


class MaterialTagsRequest(BaseModel):
    """PATCH /api/v1/material/{id}: the item's whole new tag set."""

    model_config = ConfigDict(extra="forbid")

    tags: list[str] = Field(..., max_length=MAX_TAGS, description="replaces the item's tags")


class ArtifactView(BaseModel):
    """One file an agent kept when a task's step failed."""

    name: str
    dispatch_id: str
    file: str
    content_type: str
    size: int
    sha256: str | None = None
    url: str
