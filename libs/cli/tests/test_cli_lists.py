"""Lists that answer a bare list today and a page `{devices, total, page, page_size}`
on a gateway with paged `/device`: the CLI reads every item either way."""

from __future__ import annotations

import httpx

from fleet_cli.client import Gateway


def _gateway(pages: dict[int, object]) -> tuple[Gateway, list[str]]:
    asked: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        asked.append(str(request.url.query, "ascii"))
        page = int(request.url.params.get("page", "1"))
        return httpx.Response(200, json={"code": 0, "message": "success", "data": pages[page]})

    return Gateway("http://gw", transport=httpx.MockTransport(answer)), asked


def test_a_bare_list_is_read_once() -> None:
    gw, asked = _gateway({1: [{"serial": "a"}, {"serial": "b"}]})
    assert [d["serial"] for d in gw.every("/device", "devices")] == ["a", "b"]
    assert len(asked) == 1


def test_pages_are_followed_until_the_total() -> None:
    pages: dict[int, object] = {
        n: {"devices": [{"serial": f"p{n}"}], "total": 3, "page": n, "page_size": 1}
        for n in (1, 2, 3)
    }
    gw, asked = _gateway(pages)
    assert [d["serial"] for d in gw.every("/device", "devices", online="true")] == [
        "p1",
        "p2",
        "p3",
    ]
    assert len(asked) == 3 and all("online=true" in q for q in asked)
