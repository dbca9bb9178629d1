"""Reading the material library's read model: rows for the deciders, answers to queries."""

from __future__ import annotations

import asyncpg

from fleet_contracts.codes import ErrorCode
from fleet_contracts.commands import Reply
from fleet_contracts.materials import MaterialPage
from fleet_contracts.queries import GetMaterial, ListMaterials
from fleet_scheduler.context import Context
from fleet_scheduler.library import Item, Library, PickRequest


def item_of(row: asyncpg.Record) -> Item:
    return Item(
        id=row["id"],
        sha256=row["sha256"],
        name=row["name"],
        size=row["size"],
        kind=row["kind"],
        content_type=row["content_type"],
        tags=tuple(row["tags"]),
        created_at=row["created_at"],
        version=row["version"],
        deleted=row["deleted"],
        updated_at=row["updated_at"],
    )


async def load_item(conn: asyncpg.Connection, material_id: int) -> Item | None:
    row = await conn.fetchrow("SELECT * FROM materials WHERE id = $1 FOR UPDATE", material_id)
    return None if row is None else item_of(row)


async def load_live_by_sha(conn: asyncpg.Connection, sha256: str) -> Item | None:
    row = await conn.fetchrow(
        "SELECT * FROM materials WHERE sha256 = $1 AND NOT deleted FOR UPDATE", sha256
    )
    return None if row is None else item_of(row)


async def load_for_pick(conn: asyncpg.Connection, request: PickRequest) -> Library:
    ids = [r.material_id for r in request.refs.values() if r.material_id is not None]
    shas = [r.sha256 for r in request.refs.values() if r.sha256 is not None]
    by_id: dict[int, Item] = {}
    by_sha: dict[str, Item] = {}
    if ids or shas:
        # Newest first, so a digest deleted once and uploaded again finds the live item.
        for row in await conn.fetch(
            "SELECT * FROM materials WHERE id = ANY($1::bigint[]) OR sha256 = ANY($2::text[])"
            " ORDER BY deleted DESC, id",
            ids,
            shas,
        ):
            item = item_of(row)
            by_id[item.id] = item
            by_sha[item.sha256] = item
    if not request.by_tags:
        return Library(by_id=by_id, by_sha=by_sha, empty=False)
    empty = not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM materials WHERE NOT deleted)")
    if empty:
        return Library(empty=True)
    tags = list(request.tags)
    pool_rows = await conn.fetch(
        "SELECT * FROM materials WHERE NOT deleted AND kind = $1"
        " AND (cardinality($2::text[]) = 0 OR tags && $2::text[]) ORDER BY id",
        request.kind,
        tags,
    )
    known = {
        r["tag"]
        for r in await conn.fetch(
            "SELECT DISTINCT unnest(tags) AS tag FROM materials"
            " WHERE NOT deleted AND tags && $1::text[]",
            tags,
        )
    }
    return Library(
        pool=[item_of(r) for r in pool_rows],
        known_tags=frozenset(known & set(tags)),
        empty=False,
    )


async def list_materials(ctx: Context, q: ListMaterials) -> Reply:
    where = ["NOT deleted"]
    args: list[object] = []
    if q.tag:
        args.append([q.tag])
        where.append(f"tags @> ${len(args)}::text[]")
    if q.kind:
        args.append(q.kind)
        where.append(f"kind = ${len(args)}")
    clause = " AND ".join(where)
    async with ctx.pool.acquire() as conn:
        total = await conn.fetchval(f"SELECT count(*) FROM materials WHERE {clause}", *args)
        rows = await conn.fetch(
            f"SELECT * FROM materials WHERE {clause} ORDER BY id DESC"
            f" LIMIT {q.page_size} OFFSET {(q.page - 1) * q.page_size}",
            *args,
        )
    page = MaterialPage(
        materials=[item_of(r).view() for r in rows],
        total=total,
        page=q.page,
        page_size=q.page_size,
    )
    return Reply(data=page.model_dump(mode="json"))


async def get_material(ctx: Context, q: GetMaterial) -> Reply:
    async with ctx.pool.acquire() as conn:
        if q.material_id is not None:
            row = await conn.fetchrow(
                "SELECT * FROM materials WHERE id = $1 AND NOT deleted", q.material_id
            )
        else:
            row = await conn.fetchrow(
                "SELECT * FROM materials WHERE sha256 = $1 AND NOT deleted", q.sha256 or ""
            )
    if row is None:
        what = q.material_id if q.material_id is not None else q.sha256
        return Reply.failure(ErrorCode.NOT_FOUND, f"material {what} not found")
    return Reply(data=item_of(row).view().model_dump(mode="json"))
