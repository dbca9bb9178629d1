"""Material checks: which files a post may use, decided before the phone is touched."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from fleet_agent.materials import MaterialError, select_materials
from fleet_contracts.scripts.post import PostConfig


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "media"
    folder.mkdir()
    (folder / "a.mp4").write_bytes(b"a")
    return folder


def pick(config: dict[str, object], roots: list[Path], library: Path | None = None) -> list[Path]:
    return select_materials(PostConfig(**config), roots, library, random.Random(7))


def test_missing_file_is_named(root: Path) -> None:
    gone = root / "missing.mp4"
    with pytest.raises(MaterialError, match=r"material_list\[0\]: .*missing.mp4 is not a readable"):
        pick({"material_list": [str(gone)]}, [])


def _answer(config: dict[str, object], roots: list[Path], path: str) -> str:
    with pytest.raises(MaterialError) as err:
        pick(config, roots)
    return str(err.value).replace(path, "<path>")


@pytest.mark.parametrize("with_roots", [True, False], ids=["roots", "no-roots"])
def test_one_answer_whether_or_not_the_path_exists(
    tmp_path: Path, root: Path, with_roots: bool
) -> None:
    """Missing, outside the roots, a folder, a file behind a link: the caller reads the
    same words each time, so it cannot tell which paths exist on the host."""
    roots = [root] if with_roots else []
    (tmp_path / "secret.mp4").write_bytes(b"x")
    (root / "folder.mp4").mkdir()
    probes = [
        str(root / "missing.mp4"),
        str(tmp_path / "nothing-here.mp4"),
        str(root / "folder.mp4"),
    ]
    if with_roots:
        probes += [str(tmp_path / "secret.mp4"), f"{root}/../secret.mp4"]
    answers = {_answer({"material_list": [p]}, roots, p) for p in probes}
    assert len(answers) == 1, answers
    (answer,) = answers
    assert answer.startswith("material_list[0]: <path> is not a readable file")
    if with_roots:
        assert f"inside the material roots ({root})" in answer
        assert "FLEET_AGENT_MATERIAL_ROOTS" in answer
    assert "secret" not in answer


def test_one_answer_for_folders(tmp_path: Path, root: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    probes = [str(tmp_path / "elsewhere"), str(tmp_path / "no-such-folder")]
    answers = {
        _answer({"material_source": "localFolder", "material_path": p}, [root], p) for p in probes
    }
    assert len(answers) == 1, answers
    assert "is not a readable folder inside the material roots" in answers.pop()


def test_any_readable_file_allowed_without_roots(tmp_path: Path, root: Path) -> None:
    elsewhere = tmp_path / "elsewhere.mp4"
    elsewhere.write_bytes(b"x")
    assert pick({"material_list": [str(elsewhere)]}, []) == [elsewhere.resolve()]


def test_file_inside_roots_allowed(root: Path) -> None:
    assert pick({"material_list": [str(root / "a.mp4")]}, [root]) == [(root / "a.mp4").resolve()]


def test_outside_roots_refused(tmp_path: Path, root: Path) -> None:
    outside = tmp_path / "secret.mp4"
    outside.write_bytes(b"x")
    with pytest.raises(MaterialError, match="not a readable file inside the material roots") as e:
        pick({"material_list": [str(outside)]}, [root])
    assert "FLEET_AGENT_MATERIAL_ROOTS" in str(e.value)


def test_dotdot_escape_refused(tmp_path: Path, root: Path) -> None:
    (tmp_path / "secret.mp4").write_bytes(b"x")
    sneaky = f"{root}/../secret.mp4"
    with pytest.raises(MaterialError, match="inside the material roots") as err:
        pick({"material_list": [sneaky]}, [root])
    # Where the link or `..` leads stays with the agent's log, not the caller.
    assert str(tmp_path / "secret.mp4") not in str(err.value)


def test_symlink_escape_refused(tmp_path: Path, root: Path) -> None:
    target = tmp_path / "secret.mp4"
    target.write_bytes(b"x")
    link = root / "innocent.mp4"
    link.symlink_to(target)
    with pytest.raises(MaterialError, match="inside the material roots"):
        pick({"material_list": [str(link)]}, [root])


def test_symlinked_root_still_allows_its_files(tmp_path: Path, root: Path) -> None:
    alias = tmp_path / "alias"
    alias.symlink_to(root)
    assert pick({"material_list": [str(alias / "a.mp4")]}, [alias]) == [(root / "a.mp4")]


def test_folder_is_not_a_file(root: Path) -> None:
    (root / "dir.mp4").mkdir()
    with pytest.raises(MaterialError, match="is not a readable file"):
        pick({"material_list": [str(root / "dir.mp4")]}, [])


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_unreadable_file_refused(root: Path) -> None:
    locked = root / "locked.mp4"
    locked.write_bytes(b"x")
    locked.chmod(0)
    with pytest.raises(MaterialError, match="is not a readable file"):
        pick({"material_list": [str(locked)]}, [])


def test_local_folder_picks_files_of_the_right_kind(root: Path) -> None:
    for name in ("b.jpg", "c.png", "notes.txt"):
        (root / name).write_bytes(b"x")
    images = pick(
        {
            "content_type": 1,
            "image_count": 2,
            "material_source": "localFolder",
            "material_path": str(root),
        },
        [root],
    )
    assert sorted(p.name for p in images) == ["b.jpg", "c.png"]
    video = pick({"material_source": "localFolder", "material_path": str(root)}, [])
    assert [p.name for p in video] == ["a.mp4"]


def test_local_folder_with_too_few_files(root: Path) -> None:
    with pytest.raises(MaterialError, match="holds 0 image file"):
        pick({"content_type": 1, "material_source": "localFolder", "material_path": str(root)}, [])


def test_library_picks_by_tag(tmp_path: Path) -> None:
    library = tmp_path / "library"
    (library / "cats").mkdir(parents=True)
    (library / "dogs").mkdir()
    (library / "cats" / "cat.mp4").write_bytes(b"c")
    (library / "dogs" / "dog.mp4").write_bytes(b"d")
    assert [p.name for p in pick({"materials_tags": "cats"}, [], library)] == ["cat.mp4"]
    with pytest.raises(MaterialError, match=r"no library folder for tag.*birds"):
        pick({"materials_tags": "cats, birds"}, [], library)
    with pytest.raises(MaterialError, match="FLEET_AGENT_MATERIAL_LIBRARY"):
        pick({"materials_tags": "cats"}, [], None)
