"""The material library's decisions: plain functions from (command, state) to events.

An item is the aggregate `material-<id>`: added (or found again when the same bytes are
uploaded twice), re-tagged, deleted. A post that names library items, or picks them by
tag, is resolved here once per task at create: each task's `material_list` becomes the
canonical `library:<sha256><suffix>` entries its agent fetches, and the items it uses
are recorded in a `task.materials_picked` event after its `task.created`.

No I/O: `library_reads` loads the rows these functions need.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from fleet_contracts.codes import ErrorCode
from fleet_contracts.commands import AddMaterial, DeleteMaterial, TagMaterial
from fleet_contracts.events import (
    MaterialAdded,
    MaterialDeleted,
    MaterialTagged,
    TaskCreated,
    TaskMaterialsPicked,
)
from fleet_contracts.materials import (
    LibraryRef,
    MaterialUploaded,
    MaterialView,
    canonical_ref,
    check_name,
    check_tags,
    is_library_ref,
    kind_of,
    parse_library_ref,
    split_tags,
)
from fleet_contracts.subjects import material_stream_id, task_stream_id
from fleet_scheduler.errors import Rejected
from fleet_scheduler.handlers import Outcome
from fleet_scheduler.store import NewEvent


@dataclass(frozen=True)
class Item:
    """One library item as the read model holds it."""

    id: int
    sha256: str
    name: str
    size: int
    kind: str
    content_type: str
    tags: tuple[str, ...]
    created_at: datetime
    version: int
    deleted: bool = False
    updated_at: datetime | None = None

    def view(self) -> MaterialView:
        return MaterialView(
            id=self.id,
            sha256=self.sha256,
            name=self.name,
            size=self.size,
            kind=self.kind,
            content_type=self.content_type,
            tags=list(self.tags),
            ref=f"library:{self.id}",
            created_at=self.created_at,
            updated_at=self.updated_at,
        )

    def picked(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "sha256": self.sha256,
            "name": self.name,
            "size": self.size,
            "kind": self.kind,
            "ref": canonical_ref(self.sha256, self.name),
        }


def _invalid(field_name: str, problem: str) -> Rejected:
    return Rejected(ErrorCode.INVALID_PARAMETERS, f"{field_name}: {problem}")


def _tags(tags: Sequence[str], field_name: str = "tags") -> list[str]:
    try:
        return check_tags(list(tags))
    except ValueError as exc:
        raise _invalid(field_name, str(exc)) from exc


def add_material(cmd: AddMaterial, existing: Item | None, new_id: int, now: datetime) -> Outcome:
    """A new item, or the live item that already holds these bytes (tags merged in)."""
    try:
        name = check_name(cmd.name)
    except ValueError as exc:
        raise _invalid("name", str(exc)) from exc
    tags = _tags(cmd.tags)
    if existing is not None:
        merged = list(existing.tags) + [t for t in tags if t not in existing.tags]
        outcome = Outcome()
        item = existing
        if len(merged) > len(existing.tags):
            merged = _tags(merged)
            outcome.events.append(
                NewEvent(
                    material_stream_id(existing.id),
                    MaterialTagged(material_id=existing.id, tags=merged),
                    expected_version=existing.version,
                )
            )
            item = replace(existing, tags=tuple(merged), updated_at=now)
        outcome.data = MaterialUploaded(**item.view().model_dump(), duplicate=True).model_dump(
            mode="json"
        )
        return outcome
    kind = kind_of(name)
    assert kind is not None  # check_name refuses anything else
    event = MaterialAdded(
        material_id=new_id,
        sha256=cmd.sha256,
        name=name,
        size=cmd.size,
        kind=kind,
        content_type=cmd.content_type,
        tags=tags,
    )
    item = Item(new_id, cmd.sha256, name, cmd.size, kind, cmd.content_type, tuple(tags), now, 1)
    return Outcome(
        events=[NewEvent(material_stream_id(new_id), event, expected_version=0)],
        data=MaterialUploaded(**item.view().model_dump(), duplicate=False).model_dump(mode="json"),
    )


def _live(material_id: int, item: Item | None) -> Item:
    if item is None or item.deleted:
        raise Rejected(ErrorCode.NOT_FOUND, f"material {material_id} not found")
    return item


def tag_material(cmd: TagMaterial, item: Item | None, now: datetime) -> Outcome:
    found = _live(cmd.material_id, item)
    tags = _tags(cmd.tags)
    updated = replace(found, tags=tuple(tags), updated_at=now)
    outcome = Outcome(data=updated.view().model_dump(mode="json"))
    if tags != list(found.tags):
        outcome.events.append(
            NewEvent(
                material_stream_id(found.id),
                MaterialTagged(material_id=found.id, tags=tags),
                expected_version=found.version,
            )
        )
    return outcome


def delete_material(cmd: DeleteMaterial, item: Item | None) -> Outcome:
    found = _live(cmd.material_id, item)
    return Outcome(
        events=[
            NewEvent(
                material_stream_id(found.id),
                MaterialDeleted(material_id=found.id, sha256=found.sha256),
                expected_version=found.version,
            )
        ],
        data={"material_id": found.id, "sha256": found.sha256},
    )


# Posting from the library ------------------------------------------------------------
@dataclass(frozen=True)
class PickRequest:
    """What a post's config asks of the central library."""

    refs: dict[int, LibraryRef] = field(default_factory=dict)
    """`material_list` index -> the library item it names."""
    tags: tuple[str, ...] = ()
    by_tags: bool = False
    kind: str = "video"
    count: int = 1


def pick_request(script_name: str, config: Mapping[str, Any]) -> PickRequest | None:
    """What the create needs from the library, or None when it needs nothing."""
    if script_name != "post":
        return None
    kind = "video" if config.get("content_type", 0) == 0 else "image"
    count = 1 if kind == "video" else int(config.get("image_count", 1))
    entries = list(config.get("material_list") or [])
    if entries:
        refs: dict[int, LibraryRef] = {}
        for i, entry in enumerate(entries):
            if is_library_ref(entry):
                try:
                    refs[i] = parse_library_ref(entry)
                except ValueError as exc:
                    raise _invalid(f"script_config.material_list[{i}]", str(exc)) from exc
        return PickRequest(refs=refs, kind=kind, count=count) if refs else None
    if config.get("material_source", "materialLibrary") != "materialLibrary":
        return None
    tags = tuple(split_tags(str(config.get("materials_tags") or "")))
    return PickRequest(tags=tags, by_tags=True, kind=kind, count=count)


@dataclass(frozen=True)
class Library:
    """The rows a create's pick needs, loaded by `library_reads.load_for_pick`."""

    by_id: Mapping[int, Item] = field(default_factory=dict)
    by_sha: Mapping[str, Item] = field(default_factory=dict)
    pool: Sequence[Item] = ()
    """Live items of the wanted kind carrying any of the wanted tags (all when none)."""
    known_tags: frozenset[str] = frozenset()
    """Those of the wanted tags some live item carries."""
    empty: bool = True
    """No live item at all: the agents' own folder libraries serve `materialLibrary`."""


def _resolve_ref(index: int, entry: str, ref: LibraryRef, library: Library, kind: str) -> Item:
    where = f"script_config.material_list[{index}]"
    item = (
        library.by_id.get(ref.material_id)
        if ref.material_id is not None
        else library.by_sha.get(ref.sha256 or "")
    )
    if item is None:
        raise _invalid(where, f"{entry} is not in the material library")
    if item.deleted:
        raise _invalid(where, f"{entry} ({item.name}) was deleted from the material library")
    if item.kind != kind:
        article = "an" if item.kind == "image" else "a"
        raise _invalid(
            where, f"{entry} ({item.name}) is {article} {item.kind}; this post needs {kind}s"
        )
    return item


def check_pool(request: PickRequest, library: Library) -> None:
    """Refuse a tag pick that can never be served; before any task is made."""
    unknown = [t for t in request.tags if t not in library.known_tags]
    if unknown:
        raise _invalid(
            "script_config.materials_tags",
            f"no library item is tagged {', '.join(repr(t) for t in unknown)}",
        )
    if len(library.pool) < request.count:
        tagged = f" tagged {', '.join(request.tags)}" if request.tags else ""
        raise _invalid(
            "script_config.materials_tags",
            f"the library holds {len(library.pool)} {request.kind}(s){tagged}; "
            f"the post needs {request.count}",
        )


def pick_for_tasks(
    outcome: Outcome, request: PickRequest, library: Library, rng: random.Random
) -> Outcome:
    """Each created task's own pick: its config rewritten, a picked event after it.

    A create that picks by tag from an empty central library is left to the agents'
    folder libraries (FLEET_AGENT_MATERIAL_LIBRARY), as before the central library.
    """
    fixed: dict[int, Item] = {}
    for index, ref in request.refs.items():
        fixed[index] = _resolve_ref(index, _entry(outcome, index), ref, library, request.kind)
    if request.by_tags:
        if library.empty:
            return outcome
        check_pool(request, library)
    created: list[NewEvent] = []
    picked: list[NewEvent] = []
    others: list[NewEvent] = []
    for new in outcome.events:
        event = new.event
        if not isinstance(event, TaskCreated):
            others.append(new)
            continue
        config = dict(event.script_config)
        if request.by_tags:
            items = rng.sample(list(library.pool), request.count)
            config["material_list"] = [canonical_ref(i.sha256, i.name) for i in items]
        else:
            entries = list(config["material_list"])
            for index, item in fixed.items():
                entries[index] = canonical_ref(item.sha256, item.name)
            config["material_list"] = entries
            items = [fixed[i] for i in sorted(fixed)]
        created.append(replace(new, event=event.model_copy(update={"script_config": config})))
        picked.append(
            NewEvent(
                task_stream_id(event.task_id),
                TaskMaterialsPicked(
                    task_id=event.task_id,
                    materials=[i.picked() for i in items],
                    tags=list(request.tags),
                ),
                expected_version=1,
            )
        )
    # Created events stay together so the read model inserts them in one statement.
    outcome.events = created + picked + others
    return outcome


def _entry(outcome: Outcome, index: int) -> str:
    for new in outcome.events:
        if isinstance(new.event, TaskCreated):
            return str(new.event.script_config["material_list"][index])
    return f"material_list[{index}]"
