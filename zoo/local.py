"""Open the local zoo (TASKALIGN_HOME / TASKALIGN_DATABASE_URL) without the service layer."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine
from sqlalchemy.orm import sessionmaker

from .registry import Registry
from .storage import BlobStore


@contextmanager
def local_registry(home: Path | str | None = None,
                   database_url: str | None = None) -> Iterator[Registry]:
    home = Path(home or os.environ.get("TASKALIGN_HOME", "var"))
    url = database_url or os.environ.get("TASKALIGN_DATABASE_URL") or \
        f"sqlite:///{(home / 'taskalign.db').resolve()}"
    engine = create_engine(url)
    try:
        yield Registry(sessionmaker(engine, expire_on_commit=False),
                       BlobStore(home / "artifacts"))
    finally:
        engine.dispose()
