"""Which media files a post uses, and the checks they pass before the phone is touched.

Rules, each failing with a message that names the file and the rule:
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

import os
import random
from collections.abc import Sequence
from pathlib import Path

from fleet_contracts.scripts.post import IMAGE_SUFFIXES, VIDEO_SUFFIXES, PostConfig


class MaterialError(ValueError):
    """A material cannot be used; the message names the path and the rule."""


def _inside(path: Path, roots: Sequence[Path]) -> bool:
    return any(path.is_relative_to(root) for root in roots)


def _resolved_roots(roots: Sequence[Path]) -> list[Path]:
    return [Path(os.path.realpath(root)) for root in roots]


def check_file(raw: str, field: str, roots: Sequence[Path]) -> Path:
    """The file `raw` resolved, or MaterialError naming `field`, the path and the rule."""
    path = Path(raw).expanduser()
    if not path.exists():
        raise MaterialError(f"{field}: {raw} does not exist on this agent host")
    resolved = Path(os.path.realpath(path))
    if roots:
        allowed = _resolved_roots(roots)
        if not _inside(resolved, allowed):
            shown = ", ".join(str(r) for r in roots)
            extra = f" (it resolves to {resolved})" if str(resolved) != raw else ""
            raise MaterialError(
                f"{field}: {raw}{extra} is outside the material roots ({shown}); "
                "only files under FLEET_AGENT_MATERIAL_ROOTS may be posted"
            )
    if not resolved.is_file():
        raise MaterialError(f"{field}: {raw} is not a regular file")
    if not os.access(resolved, os.R_OK):
        raise MaterialError(f"{field}: {raw} is not readable by the agent")
    return resolved


def _suffixes(config: PostConfig) -> frozenset[str]:
    return VIDEO_SUFFIXES if config.content_type == 0 else IMAGE_SUFFIXES


def _count(config: PostConfig) -> int:
    return 1 if config.content_type == 0 else config.image_count


def _check_folder(raw: str | Path, field: str, roots: Sequence[Path]) -> Path:
    folder = Path(raw).expanduser()
    if not folder.is_dir():
        raise MaterialError(f"{field}: {raw} is not a folder on this agent host")
    resolved = Path(os.path.realpath(folder))
    if roots and not _inside(resolved, _resolved_roots(roots)):
        shown = ", ".join(str(r) for r in roots)
        raise MaterialError(
            f"{field}: {raw} is outside the material roots ({shown}); "
            "only files under FLEET_AGENT_MATERIAL_ROOTS may be posted"
        )
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


def select_materials(
    config: PostConfig,
    roots: Sequence[Path],
    library: Path | None,
    rng: random.Random,
) -> list[Path]:
    """The checked files this post publishes, in order. Raises MaterialError."""
    if config.material_list:
        return [
            check_file(raw, f"material_list[{i}]", roots)
            for i, raw in enumerate(config.material_list)
        ]
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
