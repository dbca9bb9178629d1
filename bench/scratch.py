"""Where a benchmark keeps its servers' data: a fresh temporary directory, removed when
the benchmark is done with it (a flood leaves a gigabyte or more behind). A directory
the caller names is the caller's, and is kept."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path


@asynccontextmanager
async def scratch(prefix: str, given: Path | None = None) -> AsyncIterator[Path]:
    """`given` as it is, or a new directory named `prefix`…, removed afterwards."""
    if given is not None:
        yield given
        return
    root = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield root
    finally:
        await asyncio.to_thread(shutil.rmtree, root, True)
