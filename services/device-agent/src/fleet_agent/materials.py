"""Which media files a post uses, and the checks they pass before the phone is touched.

Rules (a path failing any of them gets the same answer, `refusal`, naming the field,
the path and what to do, so that no caller learns which paths exist on the host):
- every file exists, is a regular file and is readable by the agent;
- when material roots are configured (FLEET_AGENT_MATERIAL_ROOTS), the file, after
  resolving `..` and symbolic links, lies inside one of them.

Sources (`material_source`, used when `material_list` is empty):
- `localFolder`: files of the right kind directly inside `material_path`;
- `materialLibrary`, while the central library is empty (otherwise the scheduler picks
  from it at create and `material_list` holds `library:` entries): the library is a
  folder (FLEET_AGENT_MATERIAL_LIBRARY) holding one sub-folder per tag, e.g.
  `library/cats/a.mp4`, `library/summer/b.jpg`;
  `materials_tags` "cats,summer" picks among the files of those tag folders (all tags
  when empty).
One video is picked for content_type 0, `image_count` images for content_type 1.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import structlog

from fleet_contracts.scripts.post import IMAGE_SUFFIXES, VIDEO_SUFFIXES, PostConfig

log = structlog.get_logger(__name__)


class MaterialError(ValueError):
    """A material cannot be used; the message names the path and the rule."""


def _inside(path: Path, roots: Sequence[Path]) -> bool:
    return any(path.is_relative_to(root) for root in roots)


def _resolved_roots(roots: Sequence[Path]) -> list[Path]:
    return [Path(os.path.realpath(root)) for root in roots]


def refusal(field: str, raw: str | Path, roots: Sequence[Path], kind: str = "file") -> str:
    """The one answer for every path the agent will not use.

    Missing, outside the roots, of the wrong type and unreadable all read the same, so
    a caller cannot probe which paths exist on the host; the agent's own log keeps the
    precise reason for its operator.
    """
    if roots:
        shown = ", ".join(str(r) for r in roots)
        return (
            f"{field}: {raw} is not a readable {kind} inside the material roots ({shown}) "
            f"on this agent's host; put the media under one of them "
            "(FLEET_AGENT_MATERIAL_ROOTS) and check the path"
        )
    return (
        f"{field}: {raw} is not a readable {kind} on this agent's host; "
        "check the path and that the agent may read it"
    )


def _refuse(field: str, raw: str | Path, roots: Sequence[Path], reason: str, kind: str) -> NoReturn:
    log.info("material.refused", field=field, path=str(raw), reason=reason)
    raise MaterialError(refusal(field, raw, roots, kind))


def check_file(raw: str, field: str, roots: Sequence[Path]) -> Path:
    """The file `raw` resolved, or MaterialError naming `field` and the path (`refusal`)."""
    resolved = Path(os.path.realpath(Path(raw).expanduser()))
    if roots and not _inside(resolved, _resolved_roots(roots)):
        _refuse(field, raw, roots, f"outside the roots (resolves to {resolved})", "file")
    if not resolved.exists():
        _refuse(field, raw, roots, "does not exist", "file")
    if not resolved.is_file():
        _refuse(field, raw, roots, "not a regular file", "file")
    if not os.access(resolved, os.R_OK):
        _refuse(field, raw, roots, "not readable by the agent", "file")
    return resolved


def _suffixes(config: PostConfig) -> frozenset[str]:
    return VIDEO_SUFFIXES if config.content_type == 0 else IMAGE_SUFFIXES


def _count(config: PostConfig) -> int:
    return 1 if config.content_type == 0 else config.image_count


def _check_folder(raw: str | Path, field: str, roots: Sequence[Path]) -> Path:
    resolved = Path(os.path.realpath(Path(raw).expanduser()))
    if roots and not _inside(resolved, _resolved_roots(roots)):
        _refuse(field, raw, roots, f"outside the roots (resolves to {resolved})", "folder")
    if not resolved.is_dir() or not os.access(resolved, os.R_OK | os.X_OK):
        _refuse(field, raw, roots, "missing, not a folder or not readable", "folder")
    return resolved


def _candidates(folder: Path, suffixes: frozenset[str]) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes)


def _pick(candidates: list[Path], config: PostConfig, where: str, rng: random.Random) -> list[Path]:
    kind = "video" if config.content_type == 0 else "image"
    need = _count(config)
    if len(candidates) < need:
        raise MaterialError(
            f"{where}: holds {len(candidates)} {kind} file(s), the post needs {need}"
        )
    return rng.sample(candidates, need)


def check_files(files: Sequence[str], roots: Sequence[Path]) -> list[Path]:
    """The files of a `material_list`, each checked (`check_file`), in order."""
    return [check_file(raw, f"material_list[{i}]", roots) for i, raw in enumerate(files)]


class SharedChecks:
    """Checks of a `material_list` shared by the runs that ask for the same list while
    a check of it is under way: one check in a worker thread answers them all.

    A fleet posts one operator's file to many phones, and the runs of one batch start
    together: on a network share that was one round of file checks per run. Nothing is
    kept once a check has ended: a run that asks later gets a check of its own, so no
    answer is older than the request it answers."""

    def __init__(self) -> None:
        self._pending: dict[tuple[tuple[str, ...], tuple[Path, ...]], asyncio.Future[list[Path]]]
        self._pending = {}

    async def check(self, files: Sequence[str], roots: Sequence[Path]) -> list[Path]:
        key = (tuple(files), tuple(roots))
        pending = self._pending.get(key)
        if pending is None:
            # File checks may hit a slow network share: they stay off the event loop.
            pending = asyncio.ensure_future(asyncio.to_thread(check_files, key[0], key[1]))
            self._pending[key] = pending
            pending.add_done_callback(lambda done: self._ended(key, done))
        # One run stopped while waiting must not cancel the check the others wait for.
        return list(await asyncio.shield(pending))

    def _ended(
        self, key: tuple[tuple[str, ...], tuple[Path, ...]], done: asyncio.Future[list[Path]]
    ) -> None:
        if self._pending.get(key) is done:
            del self._pending[key]
        if not done.cancelled():
            done.exception()  # retrieved: every waiter may have been stopped meanwhile


def select_materials(
    config: PostConfig,
    roots: Sequence[Path],
    library: Path | None,
    rng: random.Random,
) -> list[Path]:
    """The checked files this post publishes, in order. Raises MaterialError."""
    if config.material_list:
        return check_files(config.material_list, roots)
    suffixes = _suffixes(config)
    if config.material_source == "localFolder":
        folder = _check_folder(config.material_path, "material_path", roots)
        picked = _pick(_candidates(folder, suffixes), config, f"material_path {folder}", rng)
    else:
        if library is None:
            raise MaterialError(
                "material_source: materialLibrary found the central library empty and no "
                "folder library on this agent (FLEET_AGENT_MATERIAL_LIBRARY); upload media "
                "with POST /api/v1/material, or pass material_list"
            )
        base = _check_folder(library, "material library", roots)
        tags = [t.strip() for t in config.materials_tags.split(",") if t.strip()]
        if tags:
            missing = [t for t in tags if not (base / t).is_dir()]
            if missing:
                raise MaterialError(
                    f"materials_tags: no library folder for tag(s) {', '.join(missing)} "
                    f"under {base}"
                )
            folders = [base / t for t in tags]
        else:
            folders = sorted(p for p in base.iterdir() if p.is_dir())
        pool = sorted({f for folder in folders for f in _candidates(folder, suffixes)})
        where = f"material library {base} (tags: {', '.join(tags) or 'all'})"
        picked = _pick(pool, config, where, rng)
    return [check_file(str(p), "material", roots) for p in picked]
