"""Material checks: which files a post may use, decided before the phone is touched."""

from __future__ import annotations

import asyncio
import os
import random
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest

from fleet_agent import materials
from fleet_agent.materials import MaterialError, SharedChecks, select_materials
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


class CountedChecks:
    """`check_files` as the agent runs it, counting the checks and holding each one until
    released, so that runs can ask while a check is under way."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        self.release = threading.Event()
        real = materials.check_files

        def held(files: Sequence[str], roots: Sequence[Path]) -> list[Path]:
            self.calls += 1
            self.release.wait(5)
            return real(files, roots)

        monkeypatch.setattr(materials, "check_files", held)


async def _asking(
    checks: SharedChecks, files: list[str], runs: int
) -> list[asyncio.Task[list[Path]]]:
    asked = [asyncio.create_task(checks.check(files, [])) for _ in range(runs)]
    await asyncio.sleep(0.05)  # every run is waiting on the check now
    return asked


async def test_runs_asking_for_the_same_files_at_once_share_one_check(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    counted = CountedChecks(monkeypatch)
    checks = SharedChecks()
    asked = await _asking(checks, [str(root / "a.mp4")], 20)
    counted.release.set()
    answers = await asyncio.gather(*asked)
    assert counted.calls == 1
    assert answers == [[root / "a.mp4"]] * 20
    # Nothing is kept: a file gone since is refused to the next run, with its field.
    (root / "a.mp4").unlink()
    with pytest.raises(MaterialError, match=r"material_list\[0\]: .*a.mp4 is not a readable"):
        await checks.check([str(root / "a.mp4")], [])
    assert counted.calls == 2


async def test_a_run_stopped_while_waiting_leaves_the_check_to_the_others(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    counted = CountedChecks(monkeypatch)
    checks = SharedChecks()
    stopped, *others = await _asking(checks, [str(root / "a.mp4")], 3)
    stopped.cancel()
    counted.release.set()
    assert await asyncio.gather(*others) == [[root / "a.mp4"]] * 2
    assert stopped.cancelled() and counted.calls == 1


async def test_a_refusal_reaches_every_run_that_shared_the_check(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    counted = CountedChecks(monkeypatch)
    checks = SharedChecks()
    files = [str(root / "a.mp4"), str(root / "gone.mp4")]
    asked = await _asking(checks, files, 3)
    counted.release.set()
    for answer in await asyncio.gather(*asked, return_exceptions=True):
        assert isinstance(answer, MaterialError)
        assert str(answer).startswith("material_list[1]: ")
    assert counted.calls == 1
