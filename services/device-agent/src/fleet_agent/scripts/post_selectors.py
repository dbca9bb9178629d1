"""The posting flow's uiautomator2 selectors: one table per app and app version.

When an app update moves a button, add a table for the new version here and point
`CURRENT` at it; nothing else changes. Each element lists candidate selectors, tried in
order (the first one on screen wins), so one table survives small UI variants.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from fleet_agent.phone import Selector

TIKTOK_PACKAGE = "com.zhiliaoapp.musically"
INSTAGRAM_PACKAGE = "com.instagram.android"


@dataclass(frozen=True)
class AppTable:
    app: str
    package: str
    version: str
    elements: Mapping[str, tuple[Selector, ...]]

    def get(self, element: str) -> list[Selector]:
        return list(self.elements[element])


def _tt(res: str) -> Selector:
    return {"resourceId": f"{TIKTOK_PACKAGE}:id/{res}"}


def _ig(res: str) -> Selector:
    return {"resourceId": f"{INSTAGRAM_PACKAGE}:id/{res}"}


TIKTOK_34 = AppTable(
    app="tiktok",
    package=TIKTOK_PACKAGE,
    version="34.x",
    elements={
        "dismiss_popup": ({"text": "Not now"}, {"text": "Skip"}, {"text": "Allow"}),
        "create": ({"description": "Create"}, _tt("lxd")),
        "upload": ({"text": "Upload"}, _tt("b9x")),
        "select_multiple": ({"text": "Select multiple"},),
        "first_media": (_tt("gallery_item"), _tt("iv_cover")),
        "share_target": ({"text": "TikTok"}, {"text": "Post"}),
        "search": ({"description": "Search"}, _tt("fyh")),
        "search_input": (_tt("et_search_kw"), {"className": "android.widget.EditText"}),
        "search_sounds_tab": ({"text": "Sounds"},),
        "first_sound": (_tt("sound_item"), _tt("music_item")),
        "use_sound": ({"text": "Use this sound"}, {"textContains": "Use sound"}),
        "add_sound": ({"text": "Add sound"}, {"textContains": "sound"}),
        "sound_search_input": (_tt("music_search_edit"), {"className": "android.widget.EditText"}),
        "sound_first_result": (_tt("music_item"),),
        "sound_confirm": ({"description": "Confirm"}, _tt("music_confirm")),
        "volume": ({"text": "Volume"},),
        "next": ({"text": "Next"}, _tt("next_btn")),
        "caption": (_tt("caption_edit"), {"textContains": "Describe your post"}),
        "product_link": ({"text": "Add link"},),
        "post": ({"text": "Post"}, _tt("post_btn")),
    },
)

INSTAGRAM_300 = AppTable(
    app="instagram",
    package=INSTAGRAM_PACKAGE,
    version="300.x",
    elements={
        "dismiss_popup": ({"text": "Not now"}, {"text": "OK"}),
        "create": ({"description": "Create"}, {"description": "New post"}),
        "reel_tab": ({"text": "REEL"}, {"text": "Reel"}),
        "story_tab": ({"text": "STORY"}, {"text": "Story"}),
        "select_multiple": ({"description": "Select multiple"},),
        "first_media": (_ig("gallery_grid_item_thumbnail"),),
        "share_target": ({"text": "Reels"}, {"text": "Feed"}, {"text": "Stories"}),
        "add_sound": ({"description": "Audio"}, {"text": "Add audio"}),
        "sound_search_input": (_ig("row_search_edit_text"),),
        "sound_first_result": (_ig("track_container"),),
        "sound_confirm": ({"text": "Done"},),
        "volume": ({"text": "Controls"},),
        "next": ({"text": "Next"}, {"description": "Next"}),
        "caption": (_ig("caption_input_text_view"),),
        "post": ({"text": "Share"}, {"description": "Share"}, {"text": "Your story"}),
    },
)

CURRENT: dict[str, AppTable] = {"tiktok": TIKTOK_34, "instagram": INSTAGRAM_300}
