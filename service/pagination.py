"""List responses share one shape: {"data": [...], "count": total}."""

from __future__ import annotations

from typing import Annotated, Generic, TypeVar

from fastapi import Path, Query
from pydantic import BaseModel

T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    data: list[T]
    count: int


Limit = Annotated[int, Query(ge=1, le=500, description="Page size.")]
# Row ids and offsets fit the databases' integer columns (PostgreSQL INTEGER is 32-bit):
# a larger number is a 422 with the bound, never an overflow inside the database driver.
MAX_ROW_ID = 2**31 - 1
Offset = Annotated[int, Query(ge=0, le=MAX_ROW_ID, description="Items to skip.")]
RowId = Annotated[int, Path(ge=0, le=MAX_ROW_ID, description="Numeric id.")]
After = Annotated[int, Query(ge=0, le=MAX_ROW_ID, description="Last event id seen.")]


def page(items: list[T], limit: int, offset: int) -> dict[str, object]:
    return {"data": items[offset: offset + limit], "count": len(items)}
