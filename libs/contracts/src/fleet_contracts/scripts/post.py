"""`script_config` of the built-in `post` script: TikMatrix's published table as rules.

Every condition of the table is a rule here, and every rule names its field when it
fails, so a bad create is a 400 that says what to fix.
"""

from __future__ import annotations

from pathlib import PurePosixPath, PureWindowsPath
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fleet_contracts.scripts.spintax import SpintaxError, check
from fleet_contracts.validation import FieldRuleError

VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".m4v", ".webm", ".avi", ".mkv", ".3gp"})
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".heic", ".gif", ".bmp"})

Volume = Annotated[int, Field(ge=0, le=100)]
# Linux's PATH_MAX; Windows paths are shorter still.
MAX_PATH_LENGTH = 4096
MAX_TEXT_LENGTH = 2000
Path = Annotated[str, Field(min_length=1, max_length=MAX_PATH_LENGTH)]


def media_suffix(path: str) -> str:
    # Operators paste Windows paths (the seed does: C:/Videos/video1.mp4); agents may
    # run on either, so take the suffix the way either system would.
    win = PureWindowsPath(path).suffix
    return (win or PurePosixPath(path).suffix).lower()


_suffix = media_suffix
LIBRARY_PREFIX = "library:"


class PostConfig(BaseModel):
    """Publish the operator's own videos or images to TikTok / Instagram."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    content_type: Literal[0, 1] = Field(0, description="0 video, 1 images")
    image_count: int = Field(1, ge=1, le=35, description="images to pick when content_type is 1")
    captions: str = Field("", max_length=4000, description="caption; spintax {a|b|c} allowed")
    post_way: Literal["share", "addButton", "useSound"] = "share"
    material_source: Literal["materialLibrary", "localFolder"] = Field(
        "materialLibrary", description="ignored when material_list is given"
    )
    material_path: str = Field(
        "", max_length=MAX_PATH_LENGTH, description="folder on the agent host, for localFolder"
    )
    material_list: list[Path] = Field(
        default_factory=list,
        max_length=35,
        description="exact files on the agent host, or library:<id> / library:<sha256>",
    )
    materials_tags: str = Field(
        "", max_length=MAX_TEXT_LENGTH, description="comma-separated library tags"
    )
    upload_wait_time: int = Field(30, ge=0, le=3600, description="seconds to wait for upload")
    sound_wait_time: int = Field(10, ge=0, le=600, description="seconds to wait for a sound")
    add_sound: Literal["-1", "0", "1", "custom"] = Field(
        "-1", description="-1 default, 0 off, 1 on, custom"
    )
    sound_name: str = Field(
        "", max_length=MAX_TEXT_LENGTH, description="sound name or URL, required for useSound"
    )
    custom_sound_keyword: str = Field(
        "", max_length=MAX_TEXT_LENGTH, description="required when add_sound is custom"
    )
    origin_sound_volume: Volume = 50
    add_sound_volume: Volume = 50
    add_product_link: Literal[0, 1] = Field(0, description="TikTok only")
    placement: Literal["reel", "story"] = Field("reel", description="Instagram only")

    @field_validator("add_sound", mode="before")
    @classmethod
    def _sound_as_text(cls, value: object) -> object:
        # The table says str/int: -1 and "-1" mean the same.
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        return value

    @field_validator("captions")
    @classmethod
    def _spintax_balanced(cls, value: str) -> str:
        try:
            check(value)
        except SpintaxError as exc:
            raise ValueError(f"bad spintax: {exc}") from exc
        return value

    @model_validator(mode="after")
    def _conditional_rules(self) -> Self:
        if self.post_way == "useSound" and not self.sound_name.strip():
            raise FieldRuleError("sound_name", "required when post_way is useSound")
        if self.add_sound == "custom" and not self.custom_sound_keyword.strip():
            raise FieldRuleError("custom_sound_keyword", "required when add_sound is custom")
        if (
            not self.material_list
            and self.material_source == "localFolder"
            and not self.material_path.strip()
        ):
            raise FieldRuleError("material_path", "required when material_source is localFolder")
        allowed = VIDEO_SUFFIXES if self.content_type == 0 else IMAGE_SUFFIXES
        kind = "video" if self.content_type == 0 else "image"
        for i, path in enumerate(self.material_list):
            # A library item's kind is known to the scheduler, which checks it at create.
            if path.startswith(LIBRARY_PREFIX):
                from fleet_contracts.materials import parse_library_ref  # imports this module

                try:
                    parse_library_ref(path)
                except ValueError as exc:
                    raise FieldRuleError(f"material_list[{i}]", str(exc)) from exc
                continue
            if _suffix(path) not in allowed:
                raise FieldRuleError(
                    f"material_list[{i}]",
                    f"{path!r} is not a {kind} file for content_type "
                    f"{self.content_type} (expected one of {', '.join(sorted(allowed))})",
                )
        if self.content_type == 0 and len(self.material_list) > 1:
            raise FieldRuleError("material_list", "holds one video when content_type is 0")
        return self
